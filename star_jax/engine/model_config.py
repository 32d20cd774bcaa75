"""Model hyper-parameters and named presets.

One frozen dataclass describes every decoder star_jax builds: the Llama family
(Llama, SmolLM2, Mistral, Qwen2, Qwen3), Gemma 2/3 and the GPT-J block used by the STaR paper.
Letters in comments follow the shape suffixes used in array names:
B batch, T query length, S key/cache length, D model width, N query heads,
K key/value heads, H head dim, F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

BLOCK_TYPES = ("llama", "gptj", "gemma")
LAYER_TYPES = ("full_attention", "sliding_attention")  # transformers' names
ATTENTION_PATHS = ("auto", "einsum", "dot_product")
# Fields that set how a model runs, not what it computes: settable on a loaded checkpoint.
EXECUTION_FIELDS = ("remat", "remat_policy", "scan_layers", "attention")


def execution_of(overrides: Any) -> dict[str, Any]:
  """The EXECUTION_FIELDS among ``overrides`` (a config's ``model.overrides``): what a loaded
  checkpoint, whose file fixes the architecture, takes from them."""
  return {k: v for k, v in dict(overrides or {}).items() if k in EXECUTION_FIELDS}


REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTENTION_KERNELS = ("q", "k", "v", "o")
MLP_KERNELS = ("gate", "up", "down", "fc_in", "fc_out")  # SwiGLU's three, GPT-J's two


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of one decoder; hashable so it can be a jit static argument."""

  vocab_size: int  # V
  d_model: int  # D
  num_layers: int
  num_heads: int  # N
  num_kv_heads: int  # K (grouped-query attention when K < N)
  head_dim: int  # H
  ffn_dim: int  # F
  block_type: str = "llama"  # "llama": pre-norm RMSNorm + SwiGLU; "gptj": parallel attn+MLP
  # "gemma": RMSNorm before and after both attention and MLP, GeGLU (tanh GELU), token
  # embeddings scaled by sqrt(d_model)
  max_seq_len: int = 2048
  norm_eps: float = 1e-5
  rope_base: float = 10000.0
  rotary_dim: int | None = None  # None: rotate all of H; GPT-J rotates the first 64
  rope_interleaved: bool = False  # False: rotate-half (Llama/NeoX); True: pairs (GPT-J)
  use_rope: bool = True  # False: no positional encoding at all (NoPE, the causal mask alone)
  # None: plain RoPE. ("llama3", factor, low_freq_factor, high_freq_factor, original context)
  # (Llama 3.1/3.2: long wavelengths slowed by factor, a smooth ramp between), or
  # ("freq_factors", f_0, ..., f_{R-1}): each inverse frequency divided by its f_i (the
  # rope_freqs tensor of llama.cpp's GGUF files). See engine/positions.py.
  rope_scaling: tuple | None = None
  # None: a token's position is its index in the text. Else a PositionScheme (hashable) that
  # computes positions from the tokens, a task's hook (see engine/positions.py).
  positions: Any = None
  qkv_bias: bool = False  # Qwen2
  qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over head_dim on each head's q and k, before RoPE
  # True: every RMSNorm scales by 1 + w (Gemma's safetensors store w); False: by w (llama.cpp's
  # Gemma files store 1 + w). Either way the parameter holds the file's number.
  norm_plus_one: bool = False
  # Attention scores are q.k / sqrt(query_pre_attn_scalar) (Gemma); None: / sqrt(head_dim).
  query_pre_attn_scalar: float | None = None
  attn_softcap: float | None = None  # Gemma 2: scores -> cap * tanh(scores / cap)
  final_softcap: float | None = None  # Gemma 2: logits -> cap * tanh(logits / cap)
  # Per layer "full_attention" or "sliding_attention" (keys within the last sliding_window
  # tokens, the query included); () = all full. Sliding layers rotate with local_rope_base (None:
  # rope_base) and no rope_scaling.
  layer_types: tuple[str, ...] = ()
  sliding_window: int | None = None
  local_rope_base: float | None = None
  tie_embeddings: bool = False  # SmolLM2, small Qwen2
  lm_head_bias: bool = False  # GPT-J
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype; softmax and the loss always run in float32
  remat: bool = False  # rematerialise each block in the backward pass
  # What a rematerialised block keeps from its forward pass: a jax.checkpoint_policies name.
  # "nothing_saveable" recomputes the whole block (least memory); "dots_saveable" keeps every
  # matmul output; "dots_with_no_batch_dims_saveable" those without a batch dimension.
  remat_policy: str = "nothing_saveable"
  # True: the layers' parameters are stacked ([num_layers, ...]) and run through one
  # jax.lax.scan, so XLA compiles one block instead of num_layers copies (engine/decoder.py);
  # the KV cache is stacked the same way. False: a Python loop over separate layers.
  scan_layers: bool = False
  # "auto": prefill and training through jax.nn.dot_product_attention (cuDNN flash attention
  # on GPU where it applies, XLA elsewhere) off CPU, one-token decode as a batched dot there;
  # on CPU the einsum path tuned for XLA:CPU. "einsum" / "dot_product" force one (tests).
  attention: str = "auto"
  # LoRA (engine/lora.py): rank-r adapters W + (alpha / r) * A @ B on the kernels named in
  # lora_targets; then only the adapters train. 0 = no adapters (full fine-tuning).
  lora_rank: int = 0
  lora_alpha: float = 8.0
  lora_targets: tuple[str, ...] = ATTENTION_KERNELS + MLP_KERNELS

  def __post_init__(self):
    if self.block_type not in BLOCK_TYPES:
      raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {self.block_type!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
    rd = self.rotary_dim if self.rotary_dim is not None else self.head_dim
    if rd % 2 or rd > self.head_dim:
      raise ValueError(f"rotary_dim {rd} must be even and at most head_dim {self.head_dim}")
    if self.lora_rank < 0:
      raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
    unknown = set(self.lora_targets) - set(ATTENTION_KERNELS + MLP_KERNELS)
    if unknown:
      raise ValueError(f"unknown lora_targets {sorted(unknown)}; known: "
                       f"{list(ATTENTION_KERNELS + MLP_KERNELS)}")
    kinds = {"llama3": 5, "freq_factors": 1 + self.rope_dim // 2, "linear": 2}
    if self.rope_scaling is not None and (self.rope_scaling[0] not in kinds or
                                          len(self.rope_scaling) != kinds[self.rope_scaling[0]]):
      raise ValueError(f"rope_scaling must be ('llama3', factor, low_freq_factor, "
                       f"high_freq_factor, original_max_position_embeddings), ('freq_factors', "
                       f"{self.rope_dim // 2} factors) or ('linear', factor), got "
                       f"{self.rope_scaling!r}")
    if self.layer_types:
      if not isinstance(self.layer_types, tuple) or len(self.layer_types) != self.num_layers:
        raise ValueError(f"layer_types must be a tuple of num_layers ({self.num_layers}) "
                         f"entries, got {self.layer_types!r}")
      if set(self.layer_types) - set(LAYER_TYPES):
        raise ValueError(f"layer_types must be among {LAYER_TYPES}, got {self.layer_types!r}")
    if "sliding_attention" in self.layer_types and not (self.sliding_window or 0) > 0:
      raise ValueError(f"sliding_attention layers need a sliding_window > 0, got "
                       f"{self.sliding_window!r}")
    for name in ("query_pre_attn_scalar", "attn_softcap", "final_softcap", "local_rope_base"):
      if getattr(self, name) is not None and not getattr(self, name) > 0:
        raise ValueError(f"{name} must be None or > 0, got {getattr(self, name)!r}")
    if self.attention not in ATTENTION_PATHS:
      raise ValueError(f"attention must be one of {ATTENTION_PATHS}, got {self.attention!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")

  @property
  def sliding_layers(self) -> tuple[bool, ...]:
    """Per layer: does it attend within ``sliding_window`` only?"""
    return tuple(t == "sliding_attention" for t in self.layer_types or
                 ("full_attention",) * self.num_layers)

  @property
  def rope_dim(self) -> int:
    return self.rotary_dim if self.rotary_dim is not None else self.head_dim

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def replace(self, **kwargs: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  def num_params(self, include_embedding: bool = True) -> int:
    """Analytic parameter count (matches the built model)."""
    D, N, K, H, F, V = (self.d_model, self.num_heads, self.num_kv_heads, self.head_dim,
                        self.ffn_dim, self.vocab_size)
    attn = D * N * H * 2 + D * K * H * 2 + (N * H + 2 * K * H if self.qkv_bias else 0)
    attn += 2 * H if self.qk_norm else 0
    if self.block_type == "gptj":
      mlp, norms = 2 * D * F + F + D, 2 * D
    else:  # gemma: a norm before and after attention and MLP
      mlp, norms = 3 * D * F, (4 if self.block_type == "gemma" else 2) * D
    total = self.num_layers * (attn + mlp + norms)
    total += 2 * D if self.block_type == "gptj" else D  # final norm
    emb = V * D
    head = 0 if self.tie_embeddings else V * D
    head += V if self.lm_head_bias else 0
    return total + self.num_lora_params() + (emb + head if include_embedding else head)

  def lora_shapes(self) -> dict[str, tuple[int, int]]:
    """(fan-in, fan-out) of every adapted kernel of one block, as A and B see them."""
    if not self.lora_rank:
      return {}
    D, NH, KH, F = (self.d_model, self.num_heads * self.head_dim,
                    self.num_kv_heads * self.head_dim, self.ffn_dim)
    if self.block_type == "gptj":
      mlp = (("fc_in", (D, F)), ("fc_out", (F, D)))
    else:
      mlp = (("gate", (D, F)), ("up", (D, F)), ("down", (F, D)))
    kernels = dict((("q", (D, NH)), ("k", (D, KH)), ("v", (D, KH)), ("o", (NH, D))) + mlp)
    return {k: v for k, v in kernels.items() if k in self.lora_targets}

  def num_lora_params(self) -> int:
    per_block = sum(self.lora_rank * (i + o) for i, o in self.lora_shapes().values())
    return self.num_layers * per_block

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 * non-embedding matmul params + attention (forward+backward)."""
    matmul_params = self.num_params(include_embedding=False)
    if self.tie_embeddings:
      matmul_params += self.vocab_size * self.d_model
    # causal: half the keys on average; a sliding layer at most its window
    keys = [min(seq_len / 2, self.sliding_window or seq_len) if s else seq_len / 2
            for s in self.sliding_layers]
    attn = 12 * self.num_heads * self.head_dim * sum(keys)
    return 6 * matmul_params + attn


PRESETS: dict[str, ModelConfig] = {
    # Tests: every dimension divides 2 so (2,2,2) meshes shard everything.
    "tiny": ModelConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, ffn_dim=128, max_seq_len=256),
    "tiny-gptj": ModelConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=4,
                             num_kv_heads=4, head_dim=16, ffn_dim=256, block_type="gptj",
                             rotary_dim=8, rope_interleaved=True, lm_head_bias=True,
                             max_seq_len=256),
    # ~25M parameters: the engine benchmark's reference size on a 2-core CPU.
    "25m": ModelConfig(vocab_size=8192, d_model=512, num_layers=6, num_heads=8, num_kv_heads=4,
                       head_dim=64, ffn_dim=1536, max_seq_len=1024, tie_embeddings=True),
    # Published architectures (weights come from the checkpoint loaders).
    "smollm2-135m": ModelConfig(vocab_size=49152, d_model=576, num_layers=30, num_heads=9,
                                num_kv_heads=3, head_dim=64, ffn_dim=1536, rope_base=100000.0,
                                tie_embeddings=True, max_seq_len=8192),
    "gptj-6b": ModelConfig(vocab_size=50400, d_model=4096, num_layers=28, num_heads=16,
                           num_kv_heads=16, head_dim=256, ffn_dim=16384, block_type="gptj",
                           rotary_dim=64, rope_interleaved=True, lm_head_bias=True,
                           max_seq_len=2048, param_dtype="bfloat16", dtype="bfloat16"),
    "llama3-8b": ModelConfig(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32,
                             num_kv_heads=8, head_dim=128, ffn_dim=14336, rope_base=500000.0,
                             max_seq_len=8192, param_dtype="bfloat16", dtype="bfloat16"),
    "qwen2-0.5b": ModelConfig(vocab_size=151936, d_model=896, num_layers=24, num_heads=14,
                              num_kv_heads=2, head_dim=64, ffn_dim=4864, rope_base=1000000.0,
                              qkv_bias=True, tie_embeddings=True, norm_eps=1e-6,
                              max_seq_len=32768),
}
PRESETS["llama-3-8b"] = PRESETS["llama3-8b"]  # Meta-Llama-3-8B, under Meta's own spelling too


def _llama32(d_model: int, num_layers: int, num_heads: int, head_dim: int) -> ModelConfig:
  """Llama 3.2 (1B, 3B): tied embeddings, 8 kv heads, RoPE scaled by 32 (Llama 3.1's rule)."""
  return ModelConfig(vocab_size=128256, d_model=d_model, num_layers=num_layers,
                     num_heads=num_heads, num_kv_heads=8, head_dim=head_dim, ffn_dim=8192,
                     rope_base=500000.0, rope_scaling=("llama3", 32.0, 1.0, 4.0, 8192),
                     tie_embeddings=True, max_seq_len=131072, param_dtype="bfloat16",
                     dtype="bfloat16")


def _qwen3(d_model: int, num_layers: int, num_heads: int, ffn_dim: int,
           tie: bool) -> ModelConfig:
  """Qwen3 dense models: head_dim 128 whatever the width, q/k norms, 8 kv heads."""
  return ModelConfig(vocab_size=151936, d_model=d_model, num_layers=num_layers,
                     num_heads=num_heads, num_kv_heads=8, head_dim=128, ffn_dim=ffn_dim,
                     rope_base=1000000.0, qk_norm=True, norm_eps=1e-6, tie_embeddings=tie,
                     max_seq_len=40960, param_dtype="bfloat16", dtype="bfloat16")


# The published config.json of each (Hugging Face hub, 2026): plans without the weights.
PRESETS.update({
    "llama-3.2-1b": _llama32(2048, 16, 32, 64),
    "llama-3.2-3b": _llama32(3072, 28, 24, 128),
    "llama-3.1-8b": PRESETS["llama3-8b"].replace(
        rope_scaling=("llama3", 8.0, 1.0, 4.0, 8192), max_seq_len=131072),
    "qwen3-0.6b": _qwen3(1024, 28, 16, 3072, tie=True),
    "qwen3-1.7b": _qwen3(2048, 28, 16, 6144, tie=True),
    "qwen3-4b": _qwen3(2560, 36, 32, 9728, tie=True),
    "qwen3-8b": _qwen3(4096, 36, 32, 12288, tie=False),
})



def _gemma3(vocab: int, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int,
            ffn_dim: int, window: int, max_len: int, scaling: tuple | None = None,
            dtype: str = "bfloat16") -> ModelConfig:
  """Gemma 3 (text): head_dim 256, every 6th layer global (theta 1e6, the 4B and up scaled
  linearly by 8), the others within a sliding window (theta 1e4); norms as 1 + w."""
  types = tuple("sliding_attention" if (i + 1) % 6 else "full_attention"
                for i in range(num_layers))
  return ModelConfig(vocab_size=vocab, d_model=d_model, num_layers=num_layers,
                     num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=256,
                     ffn_dim=ffn_dim, block_type="gemma", norm_eps=1e-6, rope_base=1e6,
                     rope_scaling=scaling, local_rope_base=1e4, qk_norm=True,
                     norm_plus_one=True, query_pre_attn_scalar=256.0, layer_types=types,
                     sliding_window=window, tie_embeddings=True, max_seq_len=max_len,
                     param_dtype=dtype, dtype=dtype)


# Gemma 3's published config.json (google/gemma-3-*; the 4B's text_config over transformers'
# Gemma3TextConfig defaults).
PRESETS.update({
    "gemma-3-270m": _gemma3(262144, 640, 18, 4, 1, 2048, 512, 32768, dtype="float32"),
    "gemma-3-1b": _gemma3(262144, 1152, 26, 4, 1, 6912, 512, 32768),
    "gemma-3-4b": _gemma3(262208, 2560, 34, 8, 4, 10240, 1024, 131072, ("linear", 8.0)),
})


def lora_targets(spec: str) -> tuple[str, ...]:
  """Kernel names from a comma-separated list; "attention" and "mlp" name their groups."""
  groups = {"attention": ATTENTION_KERNELS, "mlp": MLP_KERNELS}
  names = [n.strip() for n in spec.split(",") if n.strip()]
  return tuple(dict.fromkeys(k for n in names for k in groups.get(n, (n,))))


def get_preset(name: str, **overrides: Any) -> ModelConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# Hub ids whose published config.json is a preset above: what a plan reads when the checkpoint
# is not at hand (a CPU host planning a TPU run).
HUB_PRESETS = {
    "EleutherAI/gpt-j-6b": "gptj-6b",
    "meta-llama/Meta-Llama-3-8B": "llama3-8b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.2-3B": "llama-3.2-3b",
    "Qwen/Qwen3-0.6B": "qwen3-0.6b",
    "Qwen/Qwen3-1.7B": "qwen3-1.7b",
    "Qwen/Qwen3-4B": "qwen3-4b",
    "Qwen/Qwen3-8B": "qwen3-8b",
    "google/gemma-3-270m": "gemma-3-270m",
    "google/gemma-3-1b-pt": "gemma-3-1b",
    "google/gemma-3-4b-pt": "gemma-3-4b",
}
