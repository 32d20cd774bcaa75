"""LoRA: low-rank adapters on a frozen decoder, through Flax NNX's ``nnx.LoRA``.

With ``cfg.lora_rank > 0`` the decoder holds, beside each targeted kernel ``W``, an
``nnx.LoRA`` whose ``A [in, r]`` and ``B [r, out]`` are ``nnx.LoRAParam``s (B starts at zero,
so fresh adapters leave the model as it was); the layer computes
``x @ W + (alpha / r) * x @ A @ B``. Parameters then split in two partitions:

  adapters  the LoRAParams: all that trains (gradients and Adam moments exist for them
            alone), all that an iteration's checkpoint holds
  base      everything else, frozen: read by the train step, never donated or written

``fold`` writes the adapters into the kernels (``W + scale * A @ B``), which turns a
LoRA model back into a plain one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from star_jax.engine import params as params_lib
from star_jax.engine.decoder import Decoder
from star_jax.engine.model_config import ATTENTION_KERNELS, MLP_KERNELS, ModelConfig


def split(params: nnx.State) -> tuple[nnx.State, nnx.State]:
  """(adapters, base); adapters is an empty State for a model without any."""
  return nnx.split_state(params, nnx.LoRAParam, ...)


def join(adapters: nnx.State, base: nnx.State) -> nnx.State:
  """The inverse of ``split`` (the same tree structure as the model's whole State)."""
  return nnx.merge_state(base, adapters)


def has_adapters(params: nnx.State) -> bool:
  return bool(jax.tree.leaves(split(params)[0]))


def partition(params: nnx.State) -> tuple[nnx.State, nnx.State]:
  """(trained, frozen): the adapters and the base with LoRA; everything and nothing without."""
  adapters, base = split(params)
  if jax.tree.leaves(adapters):
    return adapters, base
  return params, nnx.State({})


def add_adapters(cfg: ModelConfig, mesh: Mesh, base: nnx.State, seed: int = 0
                 ) -> tuple[nnx.GraphDef, nnx.State]:
  """The LoRA model of ``cfg`` (``lora_rank > 0``) on existing plain parameters ``base``
  (random, loaded, pre-trained alike): fresh adapters, each made on its own sharding.

  The model is built whole inside the jitted initialiser, but only the adapters are
  returned, so XLA drops the base's initialisers: nothing base-sized is allocated.
  """
  if not cfg.lora_rank:
    raise ValueError("add_adapters needs cfg.lora_rank > 0")
  graphdef, abstract = params_lib.abstract_model(cfg)
  shardings = params_lib.param_shardings(split(abstract)[0], mesh)

  def create(rng):
    return split(nnx.split(Decoder(cfg, nnx.Rngs(params=rng)))[1])[0]

  with jax.set_mesh(mesh):
    adapters = jax.jit(create, out_shardings=shardings)(jax.random.key(seed))
  params = join(adapters, base)
  if jax.tree.structure(params) != jax.tree.structure(abstract):
    raise ValueError("base parameters do not match the model of the config (adapters aside)")
  return graphdef, params


def _fold(graphdef: nnx.GraphDef, params: nnx.State) -> nnx.State:
  model = nnx.merge(graphdef, params)
  for _, module in nnx.iter_modules(model):
    for name in ATTENTION_KERNELS + MLP_KERNELS:
      lora = getattr(module, f"{name}_lora", None)
      if lora is None:
        continue
      w = getattr(module, name)
      delta_IxO = (lora.lora_a[...] @ lora.lora_b[...]) * module.lora_scale
      w[...] = (w[...].astype(jnp.float32) + delta_IxO.reshape(w.shape)).astype(w.dtype)
  return split(nnx.state(model))[1]


def fold(graphdef: nnx.GraphDef, params: nnx.State) -> nnx.State:
  """The base with every adapter written into its kernel (``W + scale * A @ B``): the
  parameters of the plain model (``lora_rank=0``) that computes what the LoRA model does.
  Each kernel keeps its sharding."""
  base_shardings = params_lib.shardings_of(split(params)[1])
  return jax.jit(lambda p: _fold(graphdef, p), out_shardings=base_shardings)(params)


def restart(graphdef: nnx.GraphDef, params: nnx.State, fresh: nnx.State) -> nnx.State:
  """``params`` folded into a new base carrying ``fresh``'s adapters (with B = 0 it computes
  what ``params`` did): a trained LoRA model become the frozen base of the next training."""
  return join(split(fresh)[0], fold(graphdef, params))


def adapters_are_fresh(params: nnx.State) -> bool:
  """True when every B is zero: the adapters change nothing (no base is missing them)."""
  flat = nnx.to_flat_state(split(params)[0])
  return all(not bool(jnp.any(v[...] != 0)) for path, v in flat if path[-1] == "lora_b")
