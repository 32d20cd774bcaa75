"""Putting checkpoint tensors, converted to our layout, straight onto their target shardings.

A loader describes its format with a *table*: for every parameter path of our
decoder, the tensor's name in the file, its shape there and a function that
turns it into our ``[in, ..., out]`` layout. ``place`` checks the whole table
against the file before reading anything (missing names, shapes, leftovers),
then reads, converts and ``device_put``s one tensor at a time, so the host
never holds more than one converted tensor (for a scanned model, ``cfg.scan_layers``: one
tensor stacked over the layers) and no device gets a full copy of a sharded one.

Before that, the loaders check each file against itself: a GGUF or safetensors file cut short,
or one whose header declares tensors past its end, absurd shapes or counts, stops the load
with one line naming the file and the field, e.g.

  m.gguf: tensor 'token_embd.weight' declares 32 x 1099511627776 (F32), 140737488355328 bytes
  from byte 512, past the end of the file (8192 bytes); the file is truncated or not a model

Each check reads the header alone, bounded by the file's size (a declared count or length is
compared with the bytes left before anything is read for it), never the tensors; and a config
whose layer count the file's tensors do not hold is refused before anything walks the layers.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from typing import Callable, Iterable, Protocol

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from star_jax.engine import params as params_lib
from star_jax.engine.model_config import ModelConfig
from star_jax.runtime.errors import CheckpointError
from star_jax.runtime.files import parse_json




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
  check_table(table, source, where, ignore, cfg.block_type)
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


def check_table(table: dict[tuple, Entry], source: Source, where: str,
                ignore: Callable[[str], bool] = lambda key: False, kind: str = "") -> None:
  """The file's tensor names and shapes against the table, before anything is read: a
  missing, unexpected or misshapen tensor is one line naming it."""
  available = set(source.keys())
  missing = sorted(e.key for e in table.values() if e.key not in available)
  if missing:
    raise CheckpointError(f"{where}: missing tensor(s) {_few(missing)} "
                          f"(needed by this {kind} config)")
  used = {e.key for e in table.values()}
  unexpected = sorted(k for k in available - used if not ignore(k))
  if unexpected:
    raise CheckpointError(f"{where}: unexpected tensor(s) {_few(unexpected)}; the architecture "
                          f"has parameters this loader does not map")
  for e in table.values():  # all shapes before any reading: fail fast on a wrong config
    if tuple(source.shape(e.key)) != tuple(e.shape):
      raise CheckpointError(f"{where}: tensor {e.key!r} has shape {tuple(source.shape(e.key))}, "
                            f"expected {tuple(e.shape)} from the model config")


def _read(e: Entry, source: Source) -> np.ndarray:
  return np.asarray(e.convert(np.asarray(source.read(e.key))))


def _few(keys: list[str], n: int = 5) -> str:
  shown = ", ".join(repr(k) for k in keys[:n])
  return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


# --- model files checked against themselves ------------------------------------------------

MAX_DIMS = 8
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on its JSON header
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _past_end(path: str, what: str, start: int, nbytes: int, size: int) -> CheckpointError:
  return CheckpointError(f"{path}: {what}, {nbytes} bytes from byte {start}, past the end of the "
                         f"file ({size} bytes); the file is truncated or not a model")


def check_safetensors(path: str) -> None:
  """Header length, JSON, and every tensor's dtype, shape and data_offsets against the file."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, MAX_HEADER_BYTES):
      raise _past_end(path, "the header length field declares a header", 8, n, size)
    header = parse_json(f.read(n), f"{path}: the header", CheckpointError)
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: the header is not a JSON object")
  data = size - 8 - n
  spans = []
  for name, info in header.items():
    if name == "__metadata__":
      if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
        raise CheckpointError(f"{path}: __metadata__ is not an object of strings")
      continue
    where = f"{path}: tensor {name!r}"
    dtype, shape, offsets = (info.get(k) if isinstance(info, dict) else None
                             for k in ("dtype", "shape", "data_offsets"))
    if not isinstance(dtype, str) or dtype not in ST_ITEMSIZE:
      raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and d >= 0 for d in shape)):
      raise CheckpointError(f"{where}: bad shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[1] < offsets[0]):
      raise CheckpointError(f"{where}: bad data_offsets {offsets!r}")
    nbytes = int(np.prod(shape, dtype=object)) * ST_ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != nbytes:
      raise CheckpointError(f"{where}: shape {shape} of {dtype} is {nbytes} bytes, but "
                            f"data_offsets {offsets} hold {offsets[1] - offsets[0]}")
    if offsets[1] > data:
      raise _past_end(path, f"tensor {name!r} declares {shape} ({dtype}) in data_offsets "
                      f"{offsets}", 8 + n + offsets[0], nbytes, size)
    spans.append((offsets, name))
  end = 0  # the tensors tile the data, as the safetensors library requires
  for (begin, stop), name in sorted(spans):
    if begin != end:
      raise CheckpointError(f"{path}: tensor {name!r}: data_offsets [{begin}, {stop}] do not "
                            f"start where the tensor before ends ({end})")
    end = stop
  if end != data:
    raise CheckpointError(f"{path}: the tensors' data_offsets cover {end} of the file's {data} "
                          f"data bytes")


class _Header:
  """A bounded reader of a GGUF header: every read is checked against the file's size."""

  def __init__(self, path: str, f):
    self.path, self.f, self.size = path, f, os.path.getsize(path)

  def take(self, n: int, what: str) -> bytes:
    start = self.f.tell()
    if n > self.size - start:
      raise _past_end(self.path, f"{what} declares {n} bytes", start, n, self.size)
    return self.f.read(n)

  def unpack(self, fmt: str, what: str):
    return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

  def string(self, what: str) -> str:
    (n,) = self.unpack("Q", what)
    try:
      return self.take(n, what).decode("utf-8")
    except UnicodeDecodeError as e:
      raise CheckpointError(f"{self.path}: {what} is not UTF-8 text (byte {e.start})") from None


GGUF_VERSIONS = (2, 3)  # what the gguf package reads
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                 12: "d"}


def _skip_value(h: _Header, kind: int, what: str) -> object:
  if kind in _GGUF_SCALARS:
    return h.unpack(_GGUF_SCALARS[kind], what)[0]
  if kind == 8:
    return h.string(what)
  if kind == 9:
    (item, count) = h.unpack("IQ", what)
    if item in _GGUF_SCALARS:  # skipped in one bounded read
      h.take(count * struct.calcsize(_GGUF_SCALARS[item]), f"{what} ({count} items)")
      return None
    if count > h.size - h.f.tell():  # every item is at least one byte
      raise _past_end(h.path, f"{what} declares {count} items", h.f.tell(), count, h.size)
    for _ in range(count):
      _skip_value(h, item, what)
    return None
  raise CheckpointError(f"{h.path}: {what} has unknown value type {kind}")


def check_gguf(path: str) -> None:
  """Magic, counts, metadata lengths and every tensor's dims, type and extent against the
  file."""
  from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUF_MAGIC
  with open(path, "rb") as f:
    h = _Header(path, f)
    (magic,) = h.unpack("I", "the magic")
    if magic != GGUF_MAGIC:
      raise CheckpointError(f"{path}: not a GGUF file (magic {magic:#x})")
    version, n_tensors, n_kv = h.unpack("IQQ", "the counts")
    if version not in GGUF_VERSIONS:
      raise CheckpointError(f"{path}: GGUF version {version}; readable: {GGUF_VERSIONS}")
    alignment = 32
    for i in range(n_kv):
      key = h.string(f"metadata key {i} of {n_kv}")
      (kind,) = h.unpack("I", f"metadata {key!r}")
      value = _skip_value(h, kind, f"metadata {key!r}")
      if key == "general.alignment" and isinstance(value, int) and value > 0:
        alignment = value
    tensors = []
    for i in range(n_tensors):
      name = h.string(f"tensor name {i} of {n_tensors}")
      (n_dims,) = h.unpack("I", f"tensor {name!r}")
      if n_dims > MAX_DIMS:
        raise CheckpointError(f"{path}: tensor {name!r} declares {n_dims} dimensions")
      dims = h.unpack(f"{n_dims}Q", f"tensor {name!r} dims")
      kind, offset = h.unpack("IQ", f"tensor {name!r}")
      try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
      except (ValueError, KeyError):
        raise CheckpointError(f"{path}: tensor {name!r} has unknown type {kind}") from None
      if dims and dims[0] % block:  # a quantized row is whole blocks
        raise CheckpointError(f"{path}: tensor {name!r} rows of {dims[0]} are not whole blocks "
                              f"of {block} ({GGMLQuantizationType(kind).name})")
      tensors.append((name, dims, kind, offset, block, type_size))
    start = -(-f.tell() // alignment) * alignment
  del version
  for name, dims, kind, offset, block, type_size in tensors:
    n = int(np.prod(dims, dtype=object))
    nbytes = -(-n // block) * type_size
    if start + offset + nbytes > h.size:
      shape = " x ".join(str(d) for d in reversed(dims))  # GGUF lists dims fastest first
      raise _past_end(path, f"tensor {name!r} declares {shape} "
                      f"({GGMLQuantizationType(kind).name})", start + offset, nbytes, h.size)
    if any(d > 8 * h.size for d in dims):  # zero elements, but no type packs 8 in a byte
      raise CheckpointError(f"{path}: tensor {name!r} declares dimensions {list(dims)}, "
                            f"longer than the file ({h.size} bytes) could hold")


def check_layers(num_layers: int, keys: Iterable[str], pattern: str, where: str,
                 field: str) -> None:
  """The config's layer count against the layers the file's tensor names hold (``pattern``
  captures the layer index), before anything loops over (or allocates for) the layers."""
  held = {int(m.group(1)) for k in keys for m in [re.search(pattern, k)] if m}
  if num_layers > len(held):  # fewer: the loader names the tensors left over
    raise CheckpointError(f"{where}: {field} is {num_layers}, but the file holds tensors for "
                          f"{len(held)} layers")
