"""Device mesh, logical-axis partition rules and sharding helpers.

Parameters carry logical axis names (``axes=('embed', 'mlp')``) as NNX variable
metadata; ``RULES`` maps each logical name to mesh axes. A mesh axis that does
not divide the dimension is dropped for that array (e.g. 3 KV heads on a
tensor axis of 2 stay replicated), so any model fits any mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).
RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "embed_act": None,  # activations keep D whole; their batch is split instead
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "seq": None,
    "norm": None,
    "layers": None,  # the stacked layers of a scanned decoder: each device holds every layer
}


# The sampling layout (``sample.layout="tensor"``): Megatron-style tensor parallelism over
# every model-parallel device. Weights split along heads, MLP and vocabulary over (tensor,
# fsdp) and never along embed, so a decode step gathers no weight (under RULES' FSDP every
# step all-gathers every kernel: for one token per row that traffic dwarfs the compute);
# rows split over data alone, so a (tensor x fsdp) group decodes the same rows and its
# matmuls end in small all-reduces of activations. It costs a resharded copy of the weights
# for the sampling phase (the parameters over tensor x fsdp devices).
SAMPLING_RULES: dict[str, Any] = {
    **RULES, "batch": "data", "embed": None, "heads": ("tensor", "fsdp"),
    "kv_heads": ("tensor", "fsdp"), "mlp": ("tensor", "fsdp"), "vocab": ("tensor", "fsdp")}
LAYOUTS = {"train": RULES, "tensor": SAMPLING_RULES}

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("star_jax_sharding_rules", default=None)


def active_rules() -> Mapping[str, Any]:
  """The rules in force: those of the innermost ``rules_scope``, else RULES."""
  rules = _ACTIVE.get()
  return RULES if rules is None else rules


@contextlib.contextmanager
def rules_scope(rules: Mapping[str, Any]) -> Iterator[None]:
  """Traces inside it (activation constraints, batch layouts) follow ``rules``."""
  token = _ACTIVE.set(rules)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def make_mesh(shape: Sequence[int] | Mapping[str, int] = (-1, 1, 1),
              axis_names: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a topology-aware mesh over all (or the given) devices; one size may be -1 (= the
  rest)."""
  if isinstance(shape, Mapping):
    unknown = set(shape) - set(axis_names)
    if unknown:
      raise ValueError(f"unknown mesh axes {sorted(unknown)}; known: {list(axis_names)}")
    shape = [shape.get(name, 1) for name in axis_names]
  shape = list(shape)
  if len(shape) != len(axis_names):
    raise ValueError(f"mesh shape {shape} must have one size per axis {list(axis_names)}")
  devices = list(devices) if devices is not None else jax.devices()
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh size may be -1, got {shape}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {shape}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh {dict(zip(axis_names, shape))} needs {math.prod(shape)} devices, "
                     f"have {len(devices)}")
  # jax.make_mesh orders the devices by the hardware's topology (TPU ICI rings, GPU NVLink
  # islands via mesh_utils), so the inner axes (tensor, then fsdp) talk over the fastest links.
  return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape),
                       devices=devices)


def batch_divisor(mesh: Mesh, rules: Mapping[str, Any] | None = None) -> int:
  """How many shards the batch axis is split into (batches are padded to a multiple)."""
  axes = (rules or active_rules()).get("batch")
  axes = (axes,) if isinstance(axes, str) else (axes or ())
  return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int],
                    mesh_shape: Mapping[str, int],
                    rules: Mapping[str, Any] | None = None) -> PartitionSpec:
  """PartitionSpec for an array with logical ``axes``, skipping mesh axes that don't divide."""
  rules = rules or active_rules()
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match shape {shape}")
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    mesh_axes = rules.get(name) if name is not None else None
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    kept, size = [], 1
    for a in mesh_axes:
      n = mesh_shape.get(a, 1)
      if a in used or n == 1 or dim % (size * n):
        continue
      kept.append(a)
      size *= n
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Mapping[str, Any] | None = None):
  """A NamedSharding per variable of an (abstract) NNX state, from its ``axes`` metadata."""

  def one(var):
    axes = var.get_metadata().get("axes")
    shape = var.get_value().shape
    if axes is None:
      axes = (None,) * len(shape)
    return var.replace(NamedSharding(mesh, logical_to_spec(axes, shape, mesh.shape, rules)))

  return jax.tree.map(one, state, is_leaf=_is_var)


def named(mesh: Mesh, axes: Sequence[str | None], shape: Sequence[int],
          rules: Mapping[str, Any] | None = None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, shape, mesh.shape, rules))


def constrain(x: jax.Array, axes: Sequence[str | None],
              rules: Mapping[str, Any] | None = None) -> jax.Array:
  """Sharding constraint on an activation, when traced under ``jax.set_mesh``; else a no-op."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh.shape, rules))


def tree_key(shardings: Any) -> tuple:
  """A hashable summary of a tree of shardings (for caches of compiled functions)."""
  leaves, treedef = jax.tree.flatten(shardings)
  return (str(treedef), tuple(leaves))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def describe(mesh: Mesh) -> str:
  return ", ".join(f"{k}={v}" for k, v in mesh.shape.items())
