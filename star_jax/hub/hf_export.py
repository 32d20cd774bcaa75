"""A model out of star_jax: a Hugging Face checkpoint directory that transformers, vLLM,
lm-evaluation-harness and llama.cpp's converter read.

``export(pretrained, out_dir)`` writes ``config.json`` (the architecture's own keys),
``model.safetensors`` (sharded with an index above ``max_shard_bytes``) in the
architecture's own tensor names and layouts, ``generation_config.json`` and the tokenizer:
``tokenizer.json`` + ``tokenizer_config.json`` for a Hugging Face (or GGUF-embedded)
tokenizer, ``tokenizer.model`` + ``tokenizer_config.json`` for a SentencePiece one.

The tensor layouts are the loaders' own tables (``hub/hf.py``) run backwards: each entry's
``convert`` (file layout -> ours) is a pure rearrangement, so applying it to an array of
indices says where every one of our numbers goes in the file. What loads is what exports,
and a round trip is exact. Models no Hugging Face architecture computes (a task's position
scheme, NoPE, adapters not folded) are refused by name. Everything is written into a
temporary sibling directory that is renamed into place at the end: an export that fails
leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from star_jax.engine.model_config import ModelConfig
from star_jax.engine.positions import inv_frequencies
from star_jax.hub import hf
from star_jax.hub.place import Entry
from star_jax.runtime.errors import CheckpointError, UserError
from star_jax.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
DEFAULT_SHARD_BYTES = 4 * 2**30  # transformers' own default is 5 GB; 4 GiB keeps GCS happy
# Llama 3.1 / 3.2's published RoPE scaling, to name a GGUF file's rope_freqs factors:
# (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
LLAMA3_SCALINGS = ((8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (16.0, 1.0, 4.0, 8192))


def export(cfg: ModelConfig, params: nnx.State, tokenizer: Tokenizer | None, out_dir: str,
           dtype: str | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
  """Writes the model as a Hugging Face checkpoint into ``out_dir`` (which must not exist or
  be empty); ``dtype`` (float32, bfloat16, float16) defaults to the model's parameter dtype.
  Returns the files written."""
  if dtype is not None and dtype not in DTYPES:
    raise UserError(f"export dtype {dtype!r} is not one of {sorted(DTYPES)}")
  dtype = dtype or cfg.param_dtype
  config = hf_config(cfg, tokenizer, dtype)
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise UserError(f"{out_dir} already exists and is not an empty directory; export writes "
                    "a new directory (remove it or choose another --out)")
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.", dir=parent)
  try:
    _write_json(tmp, "config.json", config)
    _write_json(tmp, "generation_config.json", _generation_config(tokenizer))
    _write_tensors(tmp, hf_tensors(cfg, params, DTYPES[dtype]), max_shard_bytes)
    if tokenizer is not None:
      write_tokenizer(tokenizer, tmp, cfg.max_seq_len)
    _readable(tmp)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty (checked above)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  files = sorted(os.listdir(out_dir))
  logging.info("exported %s (%d layers, %s) to %s: %s", config["architectures"][0],
               cfg.num_layers, dtype, out_dir, ", ".join(files))
  return files


# ----------------------------------------------------------------------------- config.json


def architecture(cfg: ModelConfig) -> str:
  """The transformers class that computes what ``cfg`` does."""
  if cfg.lora_rank:
    raise CheckpointError("a model with LoRA adapters exports once they are folded in "
                          "(engine.lora.fold; experiment.models.load_model does it)")
  if cfg.positions is not None:
    raise CheckpointError(f"this model's positions come from a task's position scheme "
                          f"({type(cfg.positions).__name__}), which no Hugging Face "
                          "architecture computes; train with index positions to export")
  if not cfg.use_rope:
    raise CheckpointError("this model has no positional encoding (NoPE), which no Hugging Face "
                          "Llama-family architecture computes")
  if cfg.block_type == "gptj":
    return hf.GPTJ
  if cfg.block_type == "gemma":  # Gemma 3 added q/k norms to Gemma 2's block
    return "Gemma3ForCausalLM" if cfg.qk_norm else "Gemma2ForCausalLM"
  if cfg.block_type != "llama":
    raise CheckpointError(f"export of block type {cfg.block_type!r} is not built")
  if cfg.qk_norm and cfg.qkv_bias:
    raise CheckpointError("q/k norm with q/k/v biases (and no output bias) is no Hugging Face "
                          "architecture")
  if cfg.rotary_dim not in (None, cfg.head_dim) or cfg.rope_interleaved or cfg.lm_head_bias:
    raise CheckpointError("partial or interleaved RoPE and a biased head are GPT-J's; a "
                          "Llama-family model has neither")
  if cfg.qk_norm:
    return "Qwen3ForCausalLM"
  return "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"


def hf_config(cfg: ModelConfig, tokenizer: Tokenizer | None = None,
              dtype: str | None = None) -> dict[str, Any]:
  """The ``config.json`` of ``cfg`` (the inverse of ``hf.model_config``)."""
  arch = architecture(cfg)
  specials = _special_ids(tokenizer)
  common = dict(architectures=[arch], vocab_size=cfg.vocab_size,
                tie_word_embeddings=cfg.tie_embeddings, torch_dtype=dtype or cfg.param_dtype,
                use_cache=True, **specials)
  if arch == hf.GPTJ:
    return dict(common, model_type="gptj", n_embd=cfg.d_model, n_layer=cfg.num_layers,
                n_head=cfg.num_heads, n_inner=cfg.ffn_dim, rotary_dim=cfg.rope_dim,
                n_positions=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
                activation_function="gelu_new")
  if arch in hf.GEMMA:
    return _gemma_config(cfg, arch, common)
  model_type = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
                "Qwen3ForCausalLM": "qwen3"}[arch]
  out = dict(common, model_type=model_type, hidden_size=cfg.d_model,
             intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.num_layers,
             num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
             head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.max_seq_len,
             rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_base)
  if arch == "Qwen2ForCausalLM":
    out["use_sliding_window"] = False
  else:
    out.update(attention_bias=False, mlp_bias=False) if arch == "LlamaForCausalLM" else \
        out.update(attention_bias=False)
  scaling = _rope_scaling(cfg)
  if scaling is not None:
    out["rope_scaling"] = scaling
  return out


def _gemma_config(cfg: ModelConfig, arch: str, common: dict[str, Any]) -> dict[str, Any]:
  """Gemma 2 / 3 (text): the keys ``hf._gemma`` reads, in the older spelling transformers 4.5x
  and llama.cpp's converter read too (``rope_theta``, ``rope_local_base_freq``)."""
  gemma3 = arch == "Gemma3ForCausalLM"
  types = list(cfg.layer_types or ("full_attention",) * cfg.num_layers)
  out = dict(common, model_type="gemma3_text" if gemma3 else "gemma2",
             hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
             num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
             num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
             hidden_activation="gelu_pytorch_tanh", max_position_embeddings=cfg.max_seq_len,
             rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_base,
             query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.head_dim),
             sliding_window=cfg.sliding_window or cfg.max_seq_len, layer_types=types,
             attn_logit_softcapping=cfg.attn_softcap, final_logit_softcapping=cfg.final_softcap,
             attention_bias=False)
  if gemma3:
    out["rope_local_base_freq"] = cfg.local_rope_base or cfg.rope_base
    out["rope_scaling"] = None
    if cfg.rope_scaling is not None:
      kind, factor = cfg.rope_scaling
      out["rope_scaling"] = {"rope_type": kind, "factor": float(factor)}
  elif cfg.local_rope_base not in (None, cfg.rope_base) or cfg.rope_scaling is not None:
    raise CheckpointError("Gemma 2 has one RoPE base and no scaling")
  return out


def _int_if_whole(x: float) -> float | int:
  """transformers' Gemma configs validate query_pre_attn_scalar as an int (the published 256)."""
  return int(x) if float(x).is_integer() else x


def _rope_scaling(cfg: ModelConfig) -> dict[str, Any] | None:
  if cfg.rope_scaling is None:
    return None
  kind, *args = cfg.rope_scaling
  if kind == "llama3":
    factor, low, high, original = args
  else:  # a GGUF file's per-frequency factors: name the Llama 3 rule that gives them
    target = inv_frequencies(cfg.rope_dim, cfg.rope_base, cfg.rope_scaling)
    for factor, low, high, original in LLAMA3_SCALINGS:
      rule = ("llama3", factor, low, high, original)
      if np.allclose(inv_frequencies(cfg.rope_dim, cfg.rope_base, rule), target, rtol=1e-6):
        break
    else:
      raise CheckpointError("this model's RoPE frequency factors (a GGUF file's rope_freqs) "
                            "match none of Llama 3.1/3.2's published scalings, and transformers "
                            "has no config key for arbitrary factors")
  return {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": float(low),
          "high_freq_factor": float(high), "original_max_position_embeddings": int(original)}


def _special_ids(tokenizer: Tokenizer | None) -> dict[str, Any]:
  if tokenizer is None:
    return {}
  return dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
              pad_token_id=tokenizer.pad_id)


def _generation_config(tokenizer: Tokenizer | None) -> dict[str, Any]:
  out: dict[str, Any] = {"do_sample": False}
  if tokenizer is not None:
    ends = list(tokenizer.end_ids)
    out.update(bos_token_id=tokenizer.bos_id, pad_token_id=tokenizer.pad_id,
               eos_token_id=ends if len(ends) > 1 else ends[0])
  return out


# ----------------------------------------------------------------------------- tensors


def hf_table(cfg: ModelConfig) -> dict[tuple, Entry]:
  """The loader's table for ``cfg``'s architecture (our path -> file name, shape, convert)."""
  if cfg.block_type == "gemma":
    return hf.gemma_table(cfg)
  return hf.gptj_table(cfg) if cfg.block_type == "gptj" else hf.llama_table(cfg)


def invert(entry: Entry, ours: np.ndarray) -> np.ndarray:
  """The file tensor ``w`` with ``entry.convert(w) == ours``: ``convert`` applied to the
  indices of the file's layout says which file position each of our numbers came from."""
  index = np.arange(math.prod(entry.shape)).reshape(entry.shape)
  where = np.asarray(entry.convert(index))
  if where.shape != ours.shape:
    raise AssertionError(f"{entry.key}: table converts {entry.shape} to {where.shape}, the model "
                         f"holds {ours.shape}")
  flat = np.empty(math.prod(entry.shape), ours.dtype)
  flat[where.reshape(-1)] = ours.reshape(-1)
  return flat.reshape(entry.shape)


def hf_tensors(cfg: ModelConfig, params: nnx.State, np_dtype) -> dict[str, np.ndarray]:
  """Every parameter under its file name, in the file's layout and ``np_dtype``."""
  table = hf_table(cfg)
  # A Gemma from a GGUF file holds its norms as llama.cpp stores them, 1 + w (the decoder then
  # scales by the weight itself, norm_plus_one=False); Hugging Face files hold w.
  plus_one = cfg.block_type == "gemma" and not cfg.norm_plus_one
  out = {}
  for path, var in nnx.to_flat_state(params):
    value = np.asarray(jax.device_get(var.get_value()))
    if plus_one and (path[-1] == "scale" or path[-1] in ("q_norm", "k_norm")):
      value = (value.astype(np.float32) - 1).astype(value.dtype)
    layers = range(cfg.num_layers) if cfg.scan_layers and path[0] == "layers" else [None]
    for i in layers:  # a scanned model's stacked tensors, one layer at a time
      key = path if i is None else ("layers", i) + tuple(path[1:])
      if key not in table:
        raise CheckpointError(f"parameter {'/'.join(map(str, key))} has no place in a "
                              f"{architecture(cfg)} checkpoint")
      entry = table[key]
      ours = value if i is None else value[i]
      out[entry.key] = invert(entry, ours).astype(np_dtype)
  missing = {e.key for e in table.values()} - set(out)
  if missing:
    raise CheckpointError(f"the model lacks tensor(s) {sorted(missing)[:5]} its architecture "
                          "needs")
  return out


def _write_tensors(directory: str, tensors: dict[str, np.ndarray], max_shard_bytes: int):
  from safetensors.numpy import save_file
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for key in sorted(tensors):  # shards in name order, each below the limit (or one tensor)
    n = tensors[key].nbytes
    if shards[-1] and size + n > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = tensors[key]
    size += n
  meta = {"format": "pt"}  # what transformers expects of a PyTorch-convention file
  if len(shards) == 1:
    save_file(shards[0], os.path.join(directory, "model.safetensors"), metadata=meta)
    return
  weight_map = {}
  for k, shard in enumerate(shards):
    name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(directory, name), metadata=meta)
    weight_map.update({key: name for key in shard})
  total = sum(t.nbytes for t in tensors.values())
  _write_json(directory, "model.safetensors.index.json",
              {"metadata": {"total_size": total}, "weight_map": weight_map})


# ----------------------------------------------------------------------------- tokenizer


def write_tokenizer(tokenizer: Tokenizer, directory: str, max_len: int) -> None:
  """The tokenizer files transformers' AutoTokenizer reads."""
  piece = getattr(tokenizer, "id_to_piece", None)
  name = lambda i: None if i is None or piece is None else piece(i)
  config: dict[str, Any] = {"model_max_length": max_len, "add_eos_token": False,
                            "add_bos_token": bool(getattr(tokenizer, "add_bos_token", False)),
                            "bos_token": name(tokenizer.bos_id), "eos_token": name(tokenizer.eos_id),
                            "pad_token": name(tokenizer.pad_id)}
  if isinstance(tokenizer, SentencePieceTokenizer):
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
      f.write(tokenizer.model_proto)
    # transformers' Llama tokenizer reads a SentencePiece model exactly (checked by the
    # export test): no dummy prefix ("legacy"), byte fallback, our special pieces.
    config.update(tokenizer_class="LlamaTokenizer", legacy=True, add_prefix_space=False,
                  unk_token=name(tokenizer.unk_id))
  elif isinstance(tokenizer, CharTokenizer):
    # No Hugging Face tokenizer class splits text as ours does; keep ours, named plainly.
    tokenizer.save(os.path.join(directory, "star_jax_char_tokenizer.json"))
    logging.warning("a character tokenizer has no Hugging Face equivalent: wrote "
                    "star_jax_char_tokenizer.json (star_jax.tokenizer.load_tokenizer reads it)")
    return
  else:  # an HFTokenizer (a Hugging Face directory's or a GGUF file's)
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
      f.write(tokenizer.to_json())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if tokenizer.chat_template:
      config["chat_template"] = tokenizer.chat_template
  _write_json(directory, "tokenizer_config.json", {k: v for k, v in config.items()
                                                    if v is not None})


def _readable(directory: str) -> None:
  """The permissions a plain ``mkdir`` and ``open`` would have given (mkdtemp's are private)."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(directory, 0o777 & ~umask)
  for name in os.listdir(directory):
    os.chmod(os.path.join(directory, name), 0o666 & ~umask)


def _write_json(directory: str, name: str, data: dict) -> None:
  with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2, ensure_ascii=False)
    f.write("\n")
