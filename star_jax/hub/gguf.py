"""GGUF files (llama.cpp) of Llama-architecture and Gemma 3 models, dequantized to float at load
time.

Two things differ from a Hugging Face checkpoint besides the names:
- GGUF lists dimensions fastest-first (``[in, out]`` for a PyTorch ``[out, in]``
  matrix); ``gguf`` gives the data row-major, so the numpy shape is the reverse.
- llama.cpp's converter permutes the rows of Q and K within each head, from
  rotate-half RoPE pairs ``(j, j + H/2)`` to adjacent pairs ``(2j, 2j + 1)``
  for its kernels. We undo that here (as transformers does) and keep one RoPE
  convention in the decoder. Gemma's rows are not permuted.
- llama.cpp's Gemma files store every RMSNorm scale as 1 + w (transformers subtracts 1 again);
  we keep the file's numbers (``ModelConfig.norm_plus_one`` False), so loading stays a pure
  change of layout.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from jax.sharding import Mesh

from star_jax.engine.model_config import ModelConfig
from star_jax.hub.place import (CheckpointError, Entry, check_gguf, check_layers, place, split_in,
                                split_out, transpose)

SUPPORTED = ("llama", "gemma3")
GEMMA3_SWA_PATTERN = 6  # llama.cpp's Gemma 3: every 6th layer global, the rest sliding
GEMMA3_LOCAL_ROPE_BASE = 10000.0  # llama.cpp's rope_freq_base_train_swa for Gemma 3


def open_reader(path: str):
  try:
    import gguf  # optional dependency: only GGUF checkpoints need it
  except ImportError as e:
    raise ImportError("loading GGUF files needs the gguf package: pip install gguf") from e
  check_gguf(path)  # the header against the file, before the reader trusts it
  return gguf.GGUFReader(path)


def field(reader, key: str, default: Any = None) -> Any:
  f = reader.fields.get(key)
  return default if f is None else f.contents()


def model_config(reader, dtype: str | None = None, where: str = "GGUF") -> ModelConfig:
  arch = field(reader, "general.architecture")
  if arch not in SUPPORTED:
    raise CheckpointError(f"{where}: unsupported GGUF architecture {arch!r}; "
                          f"supported: {SUPPORTED}")
  get = lambda key, default=None: field(reader, f"{arch}.{key}", default)
  _check_numbers(get, f"{where}: {arch}")
  check_layers(int(get("block_count", 0)), _tensors(reader), r"^blk\.(\d+)\.", where,
               f"{arch}.block_count")

  def need(key):
    value = get(key)
    if value is None:
      raise CheckpointError(f"{where}: no {arch}.{key} in the GGUF metadata")
    return value

  try:
    if arch == "gemma3":
      return _gemma3_config(reader, get, need, dtype, where)
    return _llama_config(reader, get, need, dtype, where)
  except CheckpointError:
    raise
  except ValueError as e:  # ModelConfig's own checks (heads against kv heads, ...)
    raise CheckpointError(f"{where}: {e}") from None


# Metadata read as numbers: whole numbers >= 1, or finite reals > 0 (absent: unset).
_WHOLE = ("embedding_length", "attention.head_count", "attention.head_count_kv",
          "attention.key_length", "attention.value_length", "feed_forward_length", "block_count",
          "vocab_size", "context_length", "attention.sliding_window", "rope.dimension_count")
_REAL = ("attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.scaling.factor")


def _check_numbers(get, where: str) -> None:
  for key in _WHOLE:
    v = get(key)
    if v is not None and (type(v) is not int or v < 1):  # noqa: E721 (True is no size)
      raise CheckpointError(f"{where}.{key}={v!r} is not a whole number >= 1")
  for key in _REAL:
    v = get(key)
    if v is not None and (type(v) not in (int, float) or not 0 < v < float("inf")):
      raise CheckpointError(f"{where}.{key}={v!r} is not a finite number > 0")


def _llama_config(reader, get, need, dtype: str | None, where: str) -> ModelConfig:
  """Llama as llama.cpp's converter writes it."""
  arch = "llama"
  scaling = get("rope.scaling.type", "none")
  if scaling not in ("none", None):
    raise CheckpointError(f"{where}: RoPE scaling {scaling!r} is not implemented (implemented: "
                          "none, and llama.cpp's rope_freqs factors, Llama 3.1's rule)")
  D, N = need("embedding_length"), need("attention.head_count")
  H = get("attention.key_length") or D // N
  rope_scaling = None
  freqs = _tensors(reader).get(ROPE_FREQS)
  if freqs is not None:  # Llama 3.1/3.2: per-frequency divisors, written by the converter
    factors = np.asarray(freqs.data, np.float32).reshape(-1)
    if factors.size != H // 2:
      raise CheckpointError(f"{where}: {ROPE_FREQS} has {factors.size} factors, expected "
                            f"{H // 2} (head_dim / 2)")
    rope_scaling = ("freq_factors", *(float(f) for f in factors))
  if get("rope.dimension_count", H) != H:
    raise CheckpointError(f"{where}: partial rotary ({get('rope.dimension_count')} of {H} dims) "
                          f"is not supported for llama")
  tokens = field(reader, "tokenizer.ggml.tokens")
  vocab = get("vocab_size") or (len(tokens) if tokens else None)
  if vocab is None:
    vocab = _tensors(reader)["token_embd.weight"].shape[-1]
  dtype = dtype or "float32"  # quantized weights: float32 is the faithful default
  return ModelConfig(
      vocab_size=int(vocab), d_model=D, num_layers=need("block_count"), num_heads=N,
      num_kv_heads=get("attention.head_count_kv") or N, head_dim=H,
      ffn_dim=need("feed_forward_length"), norm_eps=float(need("attention.layer_norm_rms_epsilon")),
      rope_base=float(get("rope.freq_base", 10000.0)), rope_scaling=rope_scaling,
      max_seq_len=get("context_length", 2048),
      tie_embeddings="output.weight" not in _tensors(reader), param_dtype=dtype, dtype=dtype)


def _gemma3_config(reader, get, need, dtype: str | None, where: str) -> ModelConfig:
  """Gemma 3 as llama.cpp runs it: metadata for the shapes, its fixed rules for the rest."""
  D, N, L = need("embedding_length"), need("attention.head_count"), need("block_count")
  H = need("attention.key_length")
  if get("attention.value_length", H) != H or get("rope.dimension_count", H) != H:
    raise CheckpointError(f"{where}: gemma3 with value_length or rotary dims other than "
                          f"key_length ({H}) is not supported")
  scaling = get("rope.scaling.type", "none")
  if scaling not in ("none", "linear", None):
    raise CheckpointError(f"{where}: RoPE scaling {scaling!r} is not implemented for gemma3 "
                          f"(implemented: none, linear)")
  rope_scaling = None
  if scaling == "linear" and float(get("rope.scaling.factor", 1.0)) != 1.0:
    rope_scaling = ("linear", float(get("rope.scaling.factor")))
  types = tuple("sliding_attention" if (i + 1) % GEMMA3_SWA_PATTERN else "full_attention"
                for i in range(L))
  tokens = field(reader, "tokenizer.ggml.tokens")
  vocab = get("vocab_size") or _tensors(reader)["token_embd.weight"].shape[-1]
  if tokens and len(tokens) > vocab:
    raise CheckpointError(f"{where}: {len(tokens)} tokens for {vocab} embeddings")
  # llama.cpp's query scale: 1/sqrt(head_dim), but 1/sqrt(d_model / heads) for the 27B (62
  # layers), as the published query_pre_attn_scalar of each size.
  qpas = D // N if L == 62 else H
  dtype = dtype or "float32"
  return ModelConfig(
      vocab_size=int(vocab), d_model=D, num_layers=L, num_heads=N,
      num_kv_heads=get("attention.head_count_kv") or N, head_dim=H,
      ffn_dim=need("feed_forward_length"), block_type="gemma",
      norm_eps=float(need("attention.layer_norm_rms_epsilon")),
      rope_base=float(get("rope.freq_base", 1e6)), rope_scaling=rope_scaling,
      local_rope_base=GEMMA3_LOCAL_ROPE_BASE, layer_types=types,
      sliding_window=int(need("attention.sliding_window")), qk_norm=True, norm_plus_one=False,
      query_pre_attn_scalar=float(qpas), max_seq_len=get("context_length", 32768),
      tie_embeddings="output.weight" not in _tensors(reader), param_dtype=dtype, dtype=dtype)


def gemma3_table(cfg: ModelConfig) -> dict[tuple, Entry]:
  """llama.cpp's Gemma 3 names; Q/K rows as transformers has them, norms as stored (1 + w)."""
  D, N, K, H, F, V = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim,
                      cfg.vocab_size)
  t = {("embed",): Entry("token_embd.weight", (V, D)),
       ("final_norm", "scale"): Entry("output_norm.weight", (D,))}
  if not cfg.tie_embeddings:
    t[("lm_head",)] = Entry("output.weight", (V, D), transpose)
  for i in range(cfg.num_layers):
    p, a, b = f"blk.{i}.", ("layers", i, "attn"), ("layers", i)
    t[a + ("q",)] = Entry(p + "attn_q.weight", (N * H, D), split_out(N, H))
    t[a + ("k",)] = Entry(p + "attn_k.weight", (K * H, D), split_out(K, H))
    t[a + ("v",)] = Entry(p + "attn_v.weight", (K * H, D), split_out(K, H))
    t[a + ("o",)] = Entry(p + "attn_output.weight", (D, N * H), split_in(N, H))
    t[a + ("q_norm",)] = Entry(p + "attn_q_norm.weight", (H,))
    t[a + ("k_norm",)] = Entry(p + "attn_k_norm.weight", (H,))
    for ours, theirs in (("attn_norm", "attn_norm"), ("post_attn_norm", "post_attention_norm"),
                         ("mlp_norm", "ffn_norm"), ("post_mlp_norm", "post_ffw_norm")):
      t[b + (ours, "scale")] = Entry(f"{p}{theirs}.weight", (D,))
    t[b + ("mlp", "gate")] = Entry(p + "ffn_gate.weight", (F, D), transpose)
    t[b + ("mlp", "up")] = Entry(p + "ffn_up.weight", (F, D), transpose)
    t[b + ("mlp", "down")] = Entry(p + "ffn_down.weight", (D, F), transpose)
  return t


def unpermute(n_heads: int) -> Callable[[np.ndarray], np.ndarray]:
  """Undoes llama.cpp's Q/K row permutation, then splits heads into our [D, n, H]."""
  def convert(w_OxD: np.ndarray) -> np.ndarray:
    O, D = w_OxD.shape
    H = O // n_heads
    w_OxD = w_OxD.reshape(n_heads, H // 2, 2, D).swapaxes(1, 2).reshape(O, D)
    return split_out(n_heads, H)(w_OxD)
  return convert


def table(cfg: ModelConfig) -> dict[tuple, Entry]:
  D, N, K, H, F, V = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_dim,
                      cfg.vocab_size)
  t = {("embed",): Entry("token_embd.weight", (V, D)),
       ("final_norm", "scale"): Entry("output_norm.weight", (D,))}
  if not cfg.tie_embeddings:
    t[("lm_head",)] = Entry("output.weight", (V, D), transpose)
  for i in range(cfg.num_layers):
    p, a = f"blk.{i}.", ("layers", i, "attn")
    t[a + ("q",)] = Entry(p + "attn_q.weight", (N * H, D), unpermute(N))
    t[a + ("k",)] = Entry(p + "attn_k.weight", (K * H, D), unpermute(K))
    t[a + ("v",)] = Entry(p + "attn_v.weight", (K * H, D), split_out(K, H))
    t[a + ("o",)] = Entry(p + "attn_output.weight", (D, N * H), split_in(N, H))
    t[("layers", i, "attn_norm", "scale")] = Entry(p + "attn_norm.weight", (D,))
    t[("layers", i, "mlp_norm", "scale")] = Entry(p + "ffn_norm.weight", (D,))
    t[("layers", i, "mlp", "gate")] = Entry(p + "ffn_gate.weight", (F, D), transpose)
    t[("layers", i, "mlp", "up")] = Entry(p + "ffn_up.weight", (F, D), transpose)
    t[("layers", i, "mlp", "down")] = Entry(p + "ffn_down.weight", (D, F), transpose)
  return t


ROPE_FREQS = "rope_freqs.weight"


def _tensors(reader) -> dict:
  return {t.name: t for t in reader.tensors}


class GGUFSource:
  """Tensors of a GGUF file, each dequantized to float32 when read."""

  def __init__(self, reader):
    from gguf.quants import dequantize
    self._dequantize = dequantize
    self._tensors = _tensors(reader)

  def keys(self):
    return [k for k in self._tensors if k != ROPE_FREQS]  # read into the config, not a weight

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(self._tensors[key].shape))  # GGUF: fastest dim first

  def read(self, key: str) -> np.ndarray:
    t = self._tensors[key]
    w = self._dequantize(t.data, t.tensor_type)
    return np.asarray(w, np.float32).reshape(self.shape(key))


def load(path: str, mesh: Mesh, dtype: str | None = None, execution: dict | None = None,
         reader=None):
  """(ModelConfig, graphdef, params) of a GGUF file; ``execution`` as in ``hf.load``."""
  reader = reader if reader is not None else open_reader(path)
  cfg = model_config(reader, dtype, where=path).replace(**(execution or {}))
  tab = gemma3_table(cfg) if cfg.block_type == "gemma" else table(cfg)
  graphdef, params = place(cfg, mesh, tab, GGUFSource(reader), path)
  return cfg, graphdef, params
