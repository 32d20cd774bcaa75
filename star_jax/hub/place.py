"""Putting checkpoint tensors, converted to our layout, straight onto their target shardings.

A loader describes its format with a *table*: for every parameter path of our
decoder, the tensor's name in the file, its shape there and a function that
turns it into our ``[in, ..., out]`` layout. ``place`` checks the whole table
against the file before reading anything (missing names, shapes, leftovers),
then reads, converts and ``device_put``s one tensor at a time, so the host
never holds more than one converted tensor (for a scanned model, ``cfg.scan_layers``: one
tensor stacked over the layers) and no device gets a full copy of a sharded one.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Protocol

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from star_jax.engine import params as params_lib
from star_jax.engine.model_config import ModelConfig
from star_jax.runtime.errors import CheckpointError




class Source(Protocol):
  """Read access to the named tensors of one checkpoint (one or many files)."""

  def keys(self) -> Iterable[str]: ...
  def shape(self, key: str) -> tuple[int, ...]: ...  # numpy (row-major) order
  def read(self, key: str) -> np.ndarray: ...  # any float dtype; cast later


@dataclasses.dataclass(frozen=True)
class Entry:
  key: str  # the tensor's name in the checkpoint
  shape: tuple[int, ...]  # its shape there
  convert: Callable[[np.ndarray], np.ndarray] = lambda w: w  # file layout -> ours


def transpose(w: np.ndarray) -> np.ndarray:
  """[out, in] (PyTorch Linear, GGUF rows) -> our [in, out]."""
  return w.T


def split_out(*dims: int) -> Callable[[np.ndarray], np.ndarray]:
  """[out, in] with out = prod(dims) -> [in, *dims] (q/k/v kernels)."""
  return lambda w: w.T.reshape(w.shape[1], *dims)


def split_in(*dims: int) -> Callable[[np.ndarray], np.ndarray]:
  """[out, in] with in = prod(dims) -> [*dims, out] (the attention output kernel)."""
  return lambda w: w.T.reshape(*dims, w.shape[0])


def reshape(*dims: int) -> Callable[[np.ndarray], np.ndarray]:
  return lambda w: w.reshape(dims)


def place(cfg: ModelConfig, mesh: Mesh, table: dict[tuple, Entry], source: Source,
          where: str, ignore: Callable[[str], bool] = lambda key: False
          ) -> tuple[nnx.GraphDef, nnx.State]:
  """Our params for ``cfg`` on ``mesh``, read from ``source`` through ``table``.

  ``where`` names the checkpoint in error messages; ``ignore(key)`` is True for
  tensors the file may hold that we do not need (buffers, a tied head's copy).
  """
  graphdef, abstract = params_lib.abstract_model(cfg)
  shardings = dict(nnx.to_flat_state(params_lib.param_shardings(abstract, mesh)))
  wanted = list(nnx.to_flat_state(abstract))
  # Tables name one tensor per layer, ("layers", i, ...): the loop model's paths.
  per_layer = wanted if not cfg.scan_layers else list(
      nnx.to_flat_state(params_lib.abstract_model(cfg.replace(scan_layers=False))[1]))
  if set(table) != {path for path, _ in per_layer}:  # a loader bug, not a bad file
    raise AssertionError(f"loader table does not cover the model: "
                         f"{sorted(map(str, set(table) ^ {p for p, _ in per_layer}))}")
  available = set(source.keys())
  missing = sorted(e.key for e in table.values() if e.key not in available)
  if missing:
    raise CheckpointError(f"{where}: missing tensor(s) {_few(missing)} "
                          f"(needed by this {cfg.block_type} config)")
  used = {e.key for e in table.values()}
  unexpected = sorted(k for k in available - used if not ignore(k))
  if unexpected:
    raise CheckpointError(f"{where}: unexpected tensor(s) {_few(unexpected)}; the architecture "
                          f"has parameters this loader does not map")
  for e in table.values():  # all shapes before any reading: fail fast on a wrong config
    if tuple(source.shape(e.key)) != tuple(e.shape):
      raise CheckpointError(f"{where}: tensor {e.key!r} has shape {tuple(source.shape(e.key))}, "
                            f"expected {tuple(e.shape)} from the model config")
  placed = []
  for path, var in wanted:
    target = var.get_value()
    if cfg.scan_layers and path[0] == "layers":  # stacked: every layer's tensor, on the host
      w = np.stack([_read(table[("layers", i) + path[1:]], source)
                    for i in range(cfg.num_layers)])
    else:
      w = _read(table[path], source)
    assert w.shape == target.shape, (path, w.shape, target.shape)
    w = w.astype(target.dtype, copy=False)
    placed.append((path, var.replace(jax.device_put(w, shardings[path].get_value()))))
  return graphdef, nnx.from_flat_state(placed)


def _read(e: Entry, source: Source) -> np.ndarray:
  return np.asarray(e.convert(np.asarray(source.read(e.key))))


def _few(keys: list[str], n: int = 5) -> str:
  shown = ", ".join(repr(k) for k in keys[:n])
  return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")
