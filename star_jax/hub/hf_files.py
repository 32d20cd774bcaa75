"""A Hugging Face checkpoint directory's JSON files read and checked before they are trusted.

``config.json`` must be an object whose sizes are whole numbers and whose rates are finite
numbers, ``model.safetensors.index.json`` must name files that are in the directory: anything
else stops the load in one line naming the file and the key, e.g.

  ckpt/config.json: num_attention_heads='2' is not a whole number >= 1
"""

from __future__ import annotations

import os
import sys
from typing import Any

from star_jax.runtime.errors import CheckpointError
from star_jax.runtime.files import read_json


# config.json values read as numbers: whole numbers >= 1, or finite reals > 0 (None: unset).
_WHOLE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings",
          "sliding_window", "sliding_window_pattern", "_sliding_window_pattern", "n_embd",
          "n_head", "n_layer", "n_inner", "n_positions", "rotary_dim")
_REAL = ("rms_norm_eps", "layer_norm_epsilon", "rope_theta", "rope_local_base_freq",
         "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
         "partial_rotary_factor")
NUMBERS = frozenset(_WHOLE + _REAL)


def check_values(hf: Any, where: str) -> None:
  """config.json's numbers, groups and lists of the types the loader reads them as (its
  ``text_config`` too), so a wrong one is named here rather than failing in arithmetic."""
  if not isinstance(hf, dict):
    raise CheckpointError(f"{where}: not a JSON object")
  for key in _WHOLE:
    v = hf.get(key)
    if v is not None and (type(v) is not int or v < 1):  # noqa: E721 (True is no size)
      raise CheckpointError(f"{where}: {key}={v!r} is not a whole number >= 1")
  for key in _REAL:
    v = hf.get(key)
    if v is not None and (type(v) not in (int, float) or not 0 < v <= sys.float_info.max):
      raise CheckpointError(f"{where}: {key}={v!r} is not a finite number > 0")
  for key, kind in (("rope_scaling", dict), ("rope_parameters", dict), ("text_config", dict),
                    ("architectures", list), ("layer_types", list)):
    if hf.get(key) is not None and not isinstance(hf[key], kind):
      raise CheckpointError(f"{where}: {key}={hf[key]!r} is not a JSON "
                            f"{'object' if kind is dict else 'array'}")
  if not all(isinstance(a, str) for a in hf.get("architectures") or ()):
    raise CheckpointError(f"{where}: architectures={hf['architectures']!r} is not a list of names")
  if isinstance(hf.get("text_config"), dict):
    check_values(hf["text_config"], f"{where} (text_config)")


def index_files(index: str, directory: str) -> list[str]:
  """The files model.safetensors.index.json's weight_map names: each in ``directory``."""
  weight_map = read_json(index, CheckpointError).get("weight_map")
  if not isinstance(weight_map, dict) or not all(isinstance(v, str)
                                                 for v in weight_map.values()):
    raise CheckpointError(f"{index}: weight_map is not an object of tensor name -> file name")
  files = sorted(set(weight_map.values()))
  for name in files:
    if (os.path.basename(name) != name or not name.endswith(".safetensors")
        or not os.path.isfile(os.path.join(directory, name))):
      raise CheckpointError(f"{index}: weight_map names {name[:200]!r}, which is no "
                            f".safetensors file in {directory}")
  return files


def read_config(directory: str) -> dict[str, Any]:
  """A checkpoint directory's config.json (a JSON object), or one line naming the file."""
  return read_json(os.path.join(directory, "config.json"), CheckpointError)
