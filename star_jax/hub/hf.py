"""Hugging Face checkpoints: a directory with ``config.json`` and ``*.safetensors``.

Supported: the Llama family (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM; SmolLM2 is Llama with tied embeddings) and GPTJForCausalLM.
PyTorch ``Linear`` weights are ``[out, in]``; ours are ``[in, ..., out]``, so
every kernel is transposed (and q/k/v/o split into heads) once, at load time.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import ml_dtypes
import numpy as np
from jax.sharding import Mesh

from star_jax.engine.model_config import ModelConfig
from star_jax.hub.place import (CheckpointError, Entry, place, reshape, split_in, split_out,
                                transpose)

LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                "Qwen3ForCausalLM")
GPTJ = "GPTJForCausalLM"
SUPPORTED = (*LLAMA_FAMILY, GPTJ)
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def is_checkpoint_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def model_config(hf: dict[str, Any], dtype: str | None = None, where: str = "config.json"
                 ) -> ModelConfig:
  """Our ModelConfig from a transformers ``config.json``; refuses what the decoder lacks."""
  archs = hf.get("architectures") or []
  arch = archs[0] if archs else hf.get("model_type")
  if arch not in SUPPORTED:
    raise CheckpointError(f"{where}: unsupported architecture {arch!r}; supported: {SUPPORTED}")
  if dtype is None:
    dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    if dtype not in _DTYPES:
      raise CheckpointError(f"{where}: checkpoint dtype {dtype!r} is not one of {sorted(_DTYPES)}; "
                            f"pass dtype= to load it as one of those")
  try:
    kw = dict(param_dtype=dtype, dtype=dtype, vocab_size=hf["vocab_size"])
    return ModelConfig(**kw, **(_gptj(hf, where) if arch == GPTJ else _llama(hf, arch, where)))
  except KeyError as e:
    raise CheckpointError(f"{where}: no {e.args[0]!r}, which a {arch} config needs") from None


def _llama(hf: dict[str, Any], arch: str, where: str) -> dict[str, Any]:
  def require(key, ok, why):
    if hf.get(key) not in ok:
      raise CheckpointError(f"{where}: {key}={hf.get(key)!r} is not supported ({why})")

  require("hidden_act", ("silu",), "the decoder's MLP is SwiGLU")
  require("mlp_bias", (None, False), "no MLP biases in the decoder")
  if arch != "Qwen2ForCausalLM":  # Qwen2 always has q/k/v biases and never an o bias
    require("attention_bias", (None, False), "Llama's attention_bias also biases o_proj")
  D, N = hf["hidden_size"], hf["num_attention_heads"]
  rope_base, rope_scaling = _rope(hf, where)
  max_len = hf.get("max_position_embeddings", 2048)
  # Sliding-window attention equals full attention on sequences no longer than the
  # window, so capping the length keeps the model exact instead of refusing it.
  windowed = (hf.get("sliding_window")
              and (hf.get("use_sliding_window", True)
                   or "sliding_attention" in (hf.get("layer_types") or ())))
  if windowed:
    max_len = min(max_len, hf["sliding_window"])
  return dict(d_model=D, num_layers=hf["num_hidden_layers"], num_heads=N,
              num_kv_heads=hf.get("num_key_value_heads") or N,
              head_dim=hf.get("head_dim") or D // N, ffn_dim=hf["intermediate_size"],
              norm_eps=hf.get("rms_norm_eps", 1e-6), rope_base=rope_base,
              rope_scaling=rope_scaling, max_seq_len=max_len,
              qkv_bias=arch == "Qwen2ForCausalLM", qk_norm=arch == "Qwen3ForCausalLM",
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


ROPE_SCALINGS = ("default", "llama3")  # the rope_type values the decoder computes exactly


def _rope(hf: dict[str, Any], where: str) -> tuple[float, tuple | None]:
  """RoPE theta and scaling (``ModelConfig.rope_scaling``) from old (``rope_theta`` /
  ``rope_scaling``) or new (``rope_parameters``) keys; a scaling not built is refused by name."""
  rp = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or rp)
  kind = scaling.get("rope_type", scaling.get("type")) or "default"
  if kind not in ROPE_SCALINGS:
    raise CheckpointError(f"{where}: RoPE scaling {kind!r} is not implemented (implemented: "
                          f"{', '.join(ROPE_SCALINGS)}); refusing rather than running a "
                          "different model")
  if (hf.get("partial_rotary_factor") or rp.get("partial_rotary_factor") or 1.0) != 1.0:
    raise CheckpointError(f"{where}: partial_rotary_factor is not supported for the Llama family")
  base = float(hf.get("rope_theta") or rp.get("rope_theta") or 10000.0)
  if kind == "default":
    return base, None
  keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
  missing = [k for k in keys if scaling.get(k) is None]
  if missing:
    raise CheckpointError(f"{where}: RoPE scaling 'llama3' needs {', '.join(missing)}")
  return base, ("llama3", *(float(scaling[k]) for k in keys[:3]),
                int(scaling["original_max_position_embeddings"]))


def _gptj(hf: dict[str, Any], where: str) -> dict[str, Any]:
  if hf.get("activation_function", "gelu_new") != "gelu_new":
    raise CheckpointError(f"{where}: activation_function={hf['activation_function']!r} is not "
                          f"supported (GPT-J's MLP here is tanh-approximated gelu_new)")
  D, N = hf["n_embd"], hf["n_head"]
  return dict(block_type="gptj", d_model=D, num_layers=hf["n_layer"], num_heads=N,
              num_kv_heads=N, head_dim=D // N, ffn_dim=hf.get("n_inner") or 4 * D,
              norm_eps=hf.get("layer_norm_epsilon", 1e-5), rope_base=10000.0,
              rotary_dim=hf.get("rotary_dim"), rope_interleaved=True, lm_head_bias=True,
              max_seq_len=hf.get("n_positions", 2048),
              tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def llama_table(cfg: ModelConfig) -> dict[tuple, Entry]:
  D, N, K, H, F, V = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim,
                      cfg.vocab_size)
  t = {("embed",): Entry("model.embed_tokens.weight", (V, D)),
       ("final_norm", "scale"): Entry("model.norm.weight", (D,))}
  if not cfg.tie_embeddings:
    t[("lm_head",)] = Entry("lm_head.weight", (V, D), transpose)
  for i in range(cfg.num_layers):
    p, a = f"model.layers.{i}.", ("layers", i, "attn")
    t[a + ("q",)] = Entry(p + "self_attn.q_proj.weight", (N * H, D), split_out(N, H))
    t[a + ("k",)] = Entry(p + "self_attn.k_proj.weight", (K * H, D), split_out(K, H))
    t[a + ("v",)] = Entry(p + "self_attn.v_proj.weight", (K * H, D), split_out(K, H))
    t[a + ("o",)] = Entry(p + "self_attn.o_proj.weight", (D, N * H), split_in(N, H))
    if cfg.qkv_bias:
      t[a + ("q_bias",)] = Entry(p + "self_attn.q_proj.bias", (N * H,), reshape(N, H))
      t[a + ("k_bias",)] = Entry(p + "self_attn.k_proj.bias", (K * H,), reshape(K, H))
      t[a + ("v_bias",)] = Entry(p + "self_attn.v_proj.bias", (K * H,), reshape(K, H))
    if cfg.qk_norm:
      t[a + ("q_norm",)] = Entry(p + "self_attn.q_norm.weight", (H,))
      t[a + ("k_norm",)] = Entry(p + "self_attn.k_norm.weight", (H,))
    t[("layers", i, "attn_norm", "scale")] = Entry(p + "input_layernorm.weight", (D,))
    t[("layers", i, "mlp_norm", "scale")] = Entry(p + "post_attention_layernorm.weight", (D,))
    t[("layers", i, "mlp", "gate")] = Entry(p + "mlp.gate_proj.weight", (F, D), transpose)
    t[("layers", i, "mlp", "up")] = Entry(p + "mlp.up_proj.weight", (F, D), transpose)
    t[("layers", i, "mlp", "down")] = Entry(p + "mlp.down_proj.weight", (D, F), transpose)
  return t


def gptj_table(cfg: ModelConfig) -> dict[tuple, Entry]:
  D, N, H, F, V = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size
  t = {("embed",): Entry("transformer.wte.weight", (V, D)),
       ("final_norm", "scale"): Entry("transformer.ln_f.weight", (D,)),
       ("final_norm", "bias"): Entry("transformer.ln_f.bias", (D,)),
       ("lm_head",): Entry("lm_head.weight", (V, D), transpose),
       ("lm_head_bias",): Entry("lm_head.bias", (V,))}
  for i in range(cfg.num_layers):
    p, a = f"transformer.h.{i}.", ("layers", i, "attn")
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
      t[a + (ours,)] = Entry(f"{p}attn.{theirs}.weight", (N * H, D), split_out(N, H))
    t[a + ("o",)] = Entry(p + "attn.out_proj.weight", (D, N * H), split_in(N, H))
    t[("layers", i, "attn_norm", "scale")] = Entry(p + "ln_1.weight", (D,))
    t[("layers", i, "attn_norm", "bias")] = Entry(p + "ln_1.bias", (D,))
    t[("layers", i, "mlp", "fc_in")] = Entry(p + "mlp.fc_in.weight", (F, D), transpose)
    t[("layers", i, "mlp", "fc_in_bias")] = Entry(p + "mlp.fc_in.bias", (F,))
    t[("layers", i, "mlp", "fc_out")] = Entry(p + "mlp.fc_out.weight", (D, F), transpose)
    t[("layers", i, "mlp", "fc_out_bias")] = Entry(p + "mlp.fc_out.bias", (D,))
  return t


# Non-parameter buffers older exports saved (RoPE tables, GPT-J's causal-mask constants).
_BUFFERS = re.compile(r"(\.rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias)$")


class SafetensorsSource:
  """The tensors of one ``.safetensors`` file or of a sharded set with an index."""

  def __init__(self, directory: str):
    from safetensors import safe_open  # optional dependency: only HF checkpoints need it
    self._open = safe_open
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):  # sharded: the index names the files
      with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
      raise CheckpointError(f"{directory}: no *.safetensors files (PyTorch .bin checkpoints are "
                            f"not supported; re-save with safe_serialization=True)")
    self._file: dict[str, str] = {}
    self._meta: dict[str, tuple[str, tuple[int, ...]]] = {}  # key -> (dtype, shape)
    for name in files:
      path = os.path.join(directory, name)
      with safe_open(path, framework="np") as f:
        for k in f.keys():
          s = f.get_slice(k)
          self._file[k], self._meta[k] = path, (s.get_dtype(), tuple(s.get_shape()))

  def keys(self):
    return self._file.keys()

  def shape(self, key: str) -> tuple[int, ...]:
    return self._meta[key][1]

  def read(self, key: str) -> np.ndarray:
    if self._meta[key][0] == "BF16":  # numpy has no bfloat16: safetensors' np API refuses it
      return _read_bf16(self._file[key], key)
    with self._open(self._file[key], framework="np") as f:
      return f.get_tensor(key)


def _read_bf16(path: str, key: str) -> np.ndarray:
  """A bfloat16 tensor as ml_dtypes.bfloat16, straight from the safetensors layout."""
  with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    info = json.loads(f.read(header_len))[key]
  begin, end = info["data_offsets"]
  raw = np.fromfile(path, dtype=np.uint16, count=(end - begin) // 2, offset=8 + header_len + begin)
  return raw.view(ml_dtypes.bfloat16).reshape(info["shape"])


def load(directory: str, mesh: Mesh, dtype: str | None = None, execution: dict | None = None):
  """(ModelConfig, graphdef, params) of a transformers checkpoint directory; ``execution``:
  ModelConfig fields of how it runs (remat, scan_layers, ...)."""
  with open(os.path.join(directory, "config.json")) as f:
    hf = json.load(f)
  cfg = model_config(hf, dtype, where=os.path.join(directory, "config.json"))
  cfg = cfg.replace(**(execution or {}))
  table = gptj_table(cfg) if cfg.block_type == "gptj" else llama_table(cfg)

  def ignore(key: str) -> bool:  # a tied head may still be saved as its own tensor
    return bool(_BUFFERS.search(key)) or (cfg.tie_embeddings and key == "lm_head.weight")

  graphdef, params = place(cfg, mesh, table, SafetensorsSource(directory), directory, ignore)
  return cfg, graphdef, params
