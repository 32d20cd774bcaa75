"""Hugging Face checkpoints: a directory with ``config.json`` and ``*.safetensors``.

Supported: the Llama family (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM; SmolLM2 is Llama with tied embeddings), Gemma 2 and 3
(Gemma2ForCausalLM, Gemma3ForCausalLM, and the language model of
Gemma3ForConditionalGeneration, whose vision tower is left unread) and GPTJForCausalLM.
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
from star_jax.hub.hf_files import NUMBERS, check_values, index_files, read_config
from star_jax.hub.place import (CheckpointError, Entry, check_layers, check_safetensors, place,
                                reshape, split_in, split_out, transpose)

LLAMA_FAMILY = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                "Qwen3ForCausalLM")
GPTJ = "GPTJForCausalLM"
GEMMA3_MULTIMODAL = "Gemma3ForConditionalGeneration"
GEMMA = ("Gemma2ForCausalLM", "Gemma3ForCausalLM", GEMMA3_MULTIMODAL)
# transformers' Gemma3TextConfig defaults, which a multimodal file's text_config relies on.
GEMMA3_TEXT_DEFAULTS = dict(vocab_size=262_208, hidden_size=2304, intermediate_size=9216,
                            num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                            head_dim=256, hidden_activation="gelu_pytorch_tanh",
                            max_position_embeddings=131_072, rms_norm_eps=1e-6,
                            query_pre_attn_scalar=256, sliding_window=4096,
                            tie_word_embeddings=True)
SUPPORTED = (*LLAMA_FAMILY, *GEMMA, GPTJ)
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def is_checkpoint_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def model_config(hf: dict[str, Any], dtype: str | None = None, where: str = "config.json"
                 ) -> ModelConfig:
  """Our ModelConfig from a transformers ``config.json``; refuses what the decoder lacks."""
  check_values(hf, where)
  hf = {k: v for k, v in hf.items() if v is not None or k not in NUMBERS}  # null: not given
  archs = hf.get("architectures") or []
  arch = archs[0] if archs else hf.get("model_type")
  if arch not in SUPPORTED:
    raise CheckpointError(f"{where}: unsupported architecture {arch!r}; supported: {SUPPORTED}")
  if arch == GEMMA3_MULTIMODAL:  # the language model's config is nested
    if not isinstance(hf.get("text_config"), dict):
      raise CheckpointError(f"{where}: no 'text_config', which a {arch} config needs")
    # Published files write only what differs from Gemma3TextConfig's defaults there.
    hf = {"torch_dtype": hf.get("torch_dtype"), "dtype": hf.get("dtype"), **GEMMA3_TEXT_DEFAULTS,
          **{k: v for k, v in hf["text_config"].items() if v is not None}}
  if dtype is None:
    dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
    if not isinstance(dtype, str) or dtype not in _DTYPES:
      raise CheckpointError(f"{where}: checkpoint dtype {dtype!r} is not one of {sorted(_DTYPES)}; "
                            f"pass dtype= to load it as one of those")
  try:
    kw = dict(param_dtype=dtype, dtype=dtype, vocab_size=hf["vocab_size"])
    fields = (_gptj(hf, where) if arch == GPTJ else _gemma(hf, arch, where) if arch in GEMMA
              else _llama(hf, arch, where))
    return ModelConfig(**kw, **fields)
  except KeyError as e:
    raise CheckpointError(f"{where}: no {e.args[0]!r}, which a {arch} config needs") from None
  except CheckpointError:
    raise
  except ValueError as e:  # ModelConfig's own checks (heads against kv heads, ...)
    raise CheckpointError(f"{where}: {e}") from None


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


def _gemma(hf: dict[str, Any], arch: str, where: str) -> dict[str, Any]:
  """Gemma 2 / 3: sandwich norms (1 + w), GeGLU, scaled embeddings, sliding-window layers."""
  gemma3 = arch != "Gemma2ForCausalLM"
  act = hf.get("hidden_activation") or hf.get("hidden_act")
  if act != "gelu_pytorch_tanh":
    raise CheckpointError(f"{where}: hidden_activation={act!r} is not supported (Gemma's MLP "
                          f"here is GeGLU with tanh GELU, gelu_pytorch_tanh)")
  for key in ("attention_bias", "use_bidirectional_attention"):
    if hf.get(key):
      raise CheckpointError(f"{where}: {key}={hf[key]!r} is not supported")
  L = hf["num_hidden_layers"]
  types = hf.get("layer_types")
  if types is None:  # older configs: every n-th layer is global (Gemma 3: 6, Gemma 2: 2)
    n = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or (6 if gemma3
                                                                                    else 2)
    types = ["sliding_attention" if (i + 1) % n else "full_attention" for i in range(L)]
  if len(types) != L or set(types) - {"sliding_attention", "full_attention"}:
    raise CheckpointError(f"{where}: layer_types={types!r} is not {L} of 'sliding_attention' / "
                          f"'full_attention'")
  sliding = "sliding_attention" in types
  base, scaling, local_base = _gemma_rope(hf, gemma3, where)
  return dict(block_type="gemma", d_model=hf["hidden_size"], num_layers=L,
              num_heads=hf["num_attention_heads"],
              num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
              head_dim=hf["head_dim"], ffn_dim=hf["intermediate_size"],
              norm_eps=hf.get("rms_norm_eps", 1e-6), rope_base=base, rope_scaling=scaling,
              local_rope_base=local_base if sliding else None, qk_norm=gemma3,
              norm_plus_one=True, query_pre_attn_scalar=float(hf["query_pre_attn_scalar"]),
              attn_softcap=hf.get("attn_logit_softcapping"),
              final_softcap=hf.get("final_logit_softcapping"), layer_types=tuple(types),
              sliding_window=hf["sliding_window"] if sliding else None,
              max_seq_len=hf.get("max_position_embeddings", 8192),
              tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def _gemma_rope(hf: dict[str, Any], gemma3: bool, where: str
                ) -> tuple[float, tuple | None, float]:
  """(full layers' theta, their scaling, sliding layers' theta). transformers 5 writes
  ``rope_parameters`` per layer type; older files ``rope_theta``, ``rope_local_base_freq``
  and ``rope_scaling``. Gemma 3's full layers may scale linearly (4B and up: factor 8)."""
  rp = dict(hf.get("rope_parameters") or {})
  if "full_attention" in rp or "sliding_attention" in rp:
    full, local = dict(rp.get("full_attention") or {}), dict(rp.get("sliding_attention") or {})
  else:
    full = {**rp, **dict(hf.get("rope_scaling") or {})}
    full.setdefault("rope_theta", hf.get("rope_theta"))
    local = {"rope_theta": hf.get("rope_local_base_freq")}
  default_full, default_local = (1e6, 1e4) if gemma3 else (1e4, None)
  base = float(full.get("rope_theta") or default_full)
  local_base = float(local.get("rope_theta") or default_local or base)
  for name, params, ok in (("full_attention", full, ("default", "linear")),
                           ("sliding_attention", local, ("default",))):
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind not in ok:
      raise CheckpointError(f"{where}: RoPE scaling {kind!r} of the {name} layers is not "
                            f"implemented (implemented: {', '.join(ok)}); refusing rather than "
                            f"running a different model")
  if (full.get("rope_type", full.get("type")) or "default") == "default":
    return base, None, local_base
  if full.get("factor") is None:
    raise CheckpointError(f"{where}: RoPE scaling 'linear' needs factor")
  return base, ("linear", float(full["factor"])), local_base


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


def gemma_table(cfg: ModelConfig, prefix: str = "model.") -> dict[tuple, Entry]:
  """Gemma 2/3 under ``prefix`` (``model.``, or a multimodal file's language model's);
  norms keep the file's w (the decoder scales by 1 + w, ``cfg.norm_plus_one``)."""
  D, N, K, H, F, V = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim,
                      cfg.vocab_size)
  t = {("embed",): Entry(prefix + "embed_tokens.weight", (V, D)),
       ("final_norm", "scale"): Entry(prefix + "norm.weight", (D,))}
  if not cfg.tie_embeddings:
    t[("lm_head",)] = Entry("lm_head.weight", (V, D), transpose)
  for i in range(cfg.num_layers):
    p, a, b = f"{prefix}layers.{i}.", ("layers", i, "attn"), ("layers", i)
    t[a + ("q",)] = Entry(p + "self_attn.q_proj.weight", (N * H, D), split_out(N, H))
    t[a + ("k",)] = Entry(p + "self_attn.k_proj.weight", (K * H, D), split_out(K, H))
    t[a + ("v",)] = Entry(p + "self_attn.v_proj.weight", (K * H, D), split_out(K, H))
    t[a + ("o",)] = Entry(p + "self_attn.o_proj.weight", (D, N * H), split_in(N, H))
    if cfg.qk_norm:
      t[a + ("q_norm",)] = Entry(p + "self_attn.q_norm.weight", (H,))
      t[a + ("k_norm",)] = Entry(p + "self_attn.k_norm.weight", (H,))
    for ours, theirs in (("attn_norm", "input_layernorm"),
                         ("post_attn_norm", "post_attention_layernorm"),
                         ("mlp_norm", "pre_feedforward_layernorm"),
                         ("post_mlp_norm", "post_feedforward_layernorm")):
      t[b + (ours, "scale")] = Entry(f"{p}{theirs}.weight", (D,))
    t[b + ("mlp", "gate")] = Entry(p + "mlp.gate_proj.weight", (F, D), transpose)
    t[b + ("mlp", "up")] = Entry(p + "mlp.up_proj.weight", (F, D), transpose)
    t[b + ("mlp", "down")] = Entry(p + "mlp.down_proj.weight", (D, F), transpose)
  return t


# Where a Gemma3ForConditionalGeneration file keeps its language model: the Hub's layout (also
# what transformers 5 writes), or the module names transformers 4.5x saved.
GEMMA3_TEXT_PREFIXES = ("language_model.model.", "model.language_model.")
_VISION = re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\.")


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
    from safetensors import SafetensorError, safe_open  # optional: only HF checkpoints
    self._open = safe_open
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):  # sharded: the index names the files
      files = index_files(index, directory)
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
      raise CheckpointError(f"{directory}: no *.safetensors files (PyTorch .bin checkpoints are "
                            f"not supported; re-save with safe_serialization=True)")
    self._file: dict[str, str] = {}
    self._meta: dict[str, tuple[str, tuple[int, ...]]] = {}  # key -> (dtype, shape)
    for name in files:
      path = os.path.join(directory, name)
      check_safetensors(path)  # the header against the file, before safe_open
      try:
        with safe_open(path, framework="np") as f:
          for k in f.keys():
            s = f.get_slice(k)
            self._file[k], self._meta[k] = path, (s.get_dtype(), tuple(s.get_shape()))
      except SafetensorError as e:  # a rule of the library's our checks do not repeat
        raise CheckpointError(f"{path}: {e}") from None

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


def check_files(hf: dict[str, Any], directory: str) -> "SafetensorsSource":
  """The files' headers, and config.json's layer count against their tensors (before anything
  walks the layers); returns the files."""
  check_values(hf, os.path.join(directory, "config.json"))
  source = SafetensorsSource(directory)
  key = "n_layer" if "n_layer" in hf else "num_hidden_layers"
  layers = (hf.get("text_config") or {}).get(key, hf.get(key, 0))
  check_layers(int(layers or 0), source.keys(), r"(?:^|\.)(?:layers|h)\.(\d+)\.",
               os.path.join(directory, "config.json"), key)
  return source


def load(directory: str, mesh: Mesh, dtype: str | None = None, execution: dict | None = None):
  """(ModelConfig, graphdef, params) of a transformers checkpoint directory; ``execution``:
  ModelConfig fields of how it runs (remat, scan_layers, ...)."""
  hf = read_config(directory)
  source = check_files(hf, directory)
  cfg = model_config(hf, dtype, where=os.path.join(directory, "config.json"))
  cfg = cfg.replace(**(execution or {}))
  multimodal = (hf.get("architectures") or [None])[0] == GEMMA3_MULTIMODAL
  if cfg.block_type == "gemma":
    keys = set(source.keys())
    prefix = next((p for p in GEMMA3_TEXT_PREFIXES if p + "embed_tokens.weight" in keys),
                  GEMMA3_TEXT_PREFIXES[0]) if multimodal else "model."
    table = gemma_table(cfg, prefix)
  else:
    table = gptj_table(cfg) if cfg.block_type == "gptj" else llama_table(cfg)
  heads = ("lm_head.weight", "language_model.lm_head.weight")

  def ignore(key: str) -> bool:  # a tied head may still be saved as its own tensor
    return (bool(_BUFFERS.search(key)) or (cfg.tie_embeddings and key in heads)
            or (multimodal and bool(_VISION.match(key))))  # the vision tower: not read

  graphdef, params = place(cfg, mesh, table, source, directory, ignore)
  return cfg, graphdef, params
