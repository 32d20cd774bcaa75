"""The decoder: one Flax NNX definition for the Llama family and the GPT-J block.

The same module runs a full forward (training, evaluation) and cached decoding
(prefill + one token at a time): pass ``cache`` and the slot to write and the
new keys/values land there, attention reads the whole cache under ``mask``.
With ``cfg.scan_layers`` the layers are one Block whose parameters are stacked
``[num_layers, ...]`` and run through ``jax.lax.scan`` (one block to compile). Kernels are
stored ``[in, ..., out]`` with logical axis names for sharding; with
``cfg.lora_rank`` the targeted ones get an ``nnx.LoRA`` adapter ``<kernel>_lora`` beside
them (engine/lora.py trains, saves and folds those).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from star_jax.engine.kv_cache import Cache, LayerCache, StackedCache
from star_jax.engine.model_config import ModelConfig
from star_jax.engine.positions import rope
from star_jax.engine.sharding import constrain


def _param(rngs: nnx.Rngs, init, shape, dtype, axes) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, dtype), axes=axes)


def dense(x_BxTxI: jax.Array, w_Ix___: jax.Array, in_dims: int = 1) -> jax.Array:
  """``x @ w`` over the last ``in_dims`` axes of x and the first of w, as one 2-D matmul.

  Rows are flattened to ``[B*T, I]`` first: with two contracting axes (batch and
  sequence) in the backward pass, XLA:CPU ran the 3-D form ~1.5x slower
  (docs/benchmarks.md).
  """
  lead, feat = x_BxTxI.shape[:-in_dims], x_BxTxI.shape[-in_dims:]
  out_shape = w_Ix___.shape[in_dims:]
  x_RxI = x_BxTxI.reshape(-1, math.prod(feat))
  y_RxO = x_RxI @ w_Ix___.reshape(math.prod(feat), -1)
  return y_RxO.reshape(*lead, *out_shape)


def _adapter(cfg: ModelConfig, rngs: nnx.Rngs, name: str, in_axis: str, out_axis: str
             ) -> nnx.LoRA | None:
  """Flax's LoRA module for kernel ``name`` (its ``[in, ..., out]`` seen as 2-D), or None.

  A's input axis and B's output axis shard like the kernel's leading input / output
  axis (a flattened ``(N, H)`` splits where N would); the rank stays whole. Adapters
  are float32 whatever the model's dtype: tiny, and bfloat16 would round small updates away.
  """
  shapes = cfg.lora_shapes()  # the targets this block type has
  if name not in shapes:
    return None
  fan_in, fan_out = shapes[name]
  return nnx.LoRA(fan_in, cfg.lora_rank, fan_out, dtype=cfg.jnp_dtype, param_dtype=jnp.float32,
                  rngs=rngs, a_metadata={"axes": (in_axis, None)},
                  b_metadata={"axes": (None, out_axis)})


def project(module: nnx.Module, name: str, x_BxTxI: jax.Array, in_dims: int = 1) -> jax.Array:
  """``x @ module.<name>`` in x's dtype, plus ``scale * x @ A @ B`` where it has an adapter."""
  y = dense(x_BxTxI, getattr(module, name)[...].astype(x_BxTxI.dtype), in_dims)
  lora = getattr(module, f"{name}_lora", None)
  if lora is None:
    return y
  x_RxI = x_BxTxI.reshape(-1, math.prod(x_BxTxI.shape[-in_dims:]))
  delta_RxO = lora(x_RxI) * module.lora_scale
  return y + delta_RxO.reshape(y.shape).astype(y.dtype)


def _add_adapters(module: nnx.Module, cfg: ModelConfig, rngs: nnx.Rngs, axes: dict) -> None:
  """Sets ``<kernel>_lora`` for each targeted kernel of ``axes`` (name -> (in, out) axis)."""
  if not cfg.lora_rank:
    return
  module.lora_scale = cfg.lora_scale
  for name, (in_axis, out_axis) in axes.items():
    lora = _adapter(cfg, rngs, name, in_axis, out_axis)
    if lora is not None:
      setattr(module, f"{name}_lora", lora)


def _normal(fan_in: int):
  return jax.nn.initializers.normal(stddev=1.0 / math.sqrt(fan_in))


class Norm(nnx.Module):
  """RMSNorm (Llama) or LayerNorm with bias (GPT-J); statistics in float32."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    del rngs
    self.rms = cfg.block_type == "llama"
    self.eps = cfg.norm_eps
    self.scale = nnx.Param(jnp.ones((cfg.d_model,), cfg.jnp_param_dtype), axes=("norm",))
    if not self.rms:
      self.bias = nnx.Param(jnp.zeros((cfg.d_model,), cfg.jnp_param_dtype), axes=("norm",))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    x = x_BxTxD.astype(jnp.float32)
    if self.rms:
      x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
      y = x * self.scale[...].astype(jnp.float32)
    else:
      x = x - jnp.mean(x, axis=-1, keepdims=True)
      x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
      y = x * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x_BxTxD.dtype)


def head_rms_norm(x_BxTxNxH: jax.Array, scale_H: jax.Array, eps: float) -> jax.Array:
  """RMSNorm of every head's vector (Qwen3's q/k norm), statistics in float32."""
  x = x_BxTxNxH.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  return (x * scale_H.astype(jnp.float32)).astype(x_BxTxNxH.dtype)


def attention_path(choice: str, T: int) -> str:
  """How T query tokens attend: "dot_product" (jax.nn.dot_product_attention), "einsum", or
  "einsum_cpu" (one grouped-query token as multiply-and-reduce, for XLA:CPU)."""
  cpu = jax.default_backend() == "cpu"
  if choice == "dot_product" and T > 1:
    return "dot_product"
  if choice == "auto" and T > 1 and not cpu:
    return "dot_product"
  return "einsum_cpu" if cpu and T == 1 else "einsum"


def _einsum_attention(q_BxTxNxH, k_BxKxSxH, v_BxKxSxH, mask_BxTxS, multiply_reduce: bool):
  """Scores and softmax in float32 over the cache as it lies ([B, K, S, H])."""
  dt = q_BxTxNxH.dtype
  B, T, N, H = q_BxTxNxH.shape
  K = k_BxKxSxH.shape[1]
  q_BxKxGxTxH = q_BxTxNxH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
  if multiply_reduce and N // K > 1:
    # One new token with grouped-query heads: scores as multiply-and-reduce, which XLA:CPU
    # fuses into one pass over the cache; as a batched dot with G > 1 rows per kv head it
    # ran up to 6x slower. With G == 1 the dot is the faster form (docs/performance.md).
    # Same float32 accumulation either way.
    q_BxKxGxH = q_BxKxGxTxH[:, :, :, 0].astype(jnp.float32)
    scores_BxKxGxS = jnp.sum(q_BxKxGxH[:, :, :, None, :]
                             * k_BxKxSxH[:, :, None].astype(jnp.float32), axis=-1)
    scores_BxKxGxTxS = scores_BxKxGxS[:, :, :, None] / math.sqrt(H)
  else:
    scores_BxKxGxTxS = jnp.einsum("bkgth,bksh->bkgts", q_BxKxGxTxH, k_BxKxSxH.astype(dt),
                                  preferred_element_type=jnp.float32) / math.sqrt(H)
  scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, -1e30)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(dt)
  out_BxKxGxTxH = jnp.einsum("bkgts,bksh->bkgth", probs_BxKxGxTxS, v_BxKxSxH.astype(dt))
  return out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    D, N, K, H, pd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_param_dtype
    self.q = _param(rngs, _normal(D), (D, N, H), pd, ("embed", "heads", "head_dim"))
    self.k = _param(rngs, _normal(D), (D, K, H), pd, ("embed", "kv_heads", "head_dim"))
    self.v = _param(rngs, _normal(D), (D, K, H), pd, ("embed", "kv_heads", "head_dim"))
    self.o = _param(rngs, _normal(N * H), (N, H, D), pd, ("heads", "head_dim", "embed"))
    if cfg.qkv_bias:
      zeros = jax.nn.initializers.zeros
      self.q_bias = _param(rngs, zeros, (N, H), pd, ("heads", "head_dim"))
      self.k_bias = _param(rngs, zeros, (K, H), pd, ("kv_heads", "head_dim"))
      self.v_bias = _param(rngs, zeros, (K, H), pd, ("kv_heads", "head_dim"))
    if cfg.qk_norm:
      self.q_norm = nnx.Param(jnp.ones((H,), pd), axes=("norm",))
      self.k_norm = nnx.Param(jnp.ones((H,), pd), axes=("norm",))
    _add_adapters(self, cfg, rngs, {"q": ("embed", "heads"), "k": ("embed", "kv_heads"),
                                    "v": ("embed", "kv_heads"), "o": ("heads", "embed")})

  def __call__(self, x_BxTxD, positions, mask_BxTxS, cache: LayerCache | None,
               cache_slot) -> tuple[jax.Array, LayerCache | None]:
    cfg, dt = self.cfg, x_BxTxD.dtype
    q_BxTxNxH = project(self, "q", x_BxTxD)
    k_BxTxKxH = project(self, "k", x_BxTxD)
    v_BxTxKxH = project(self, "v", x_BxTxD)
    if cfg.qkv_bias:
      q_BxTxNxH += self.q_bias[...].astype(dt)
      k_BxTxKxH += self.k_bias[...].astype(dt)
      v_BxTxKxH += self.v_bias[...].astype(dt)
    if cfg.qk_norm:
      q_BxTxNxH = head_rms_norm(q_BxTxNxH, self.q_norm[...], cfg.norm_eps)
      k_BxTxKxH = head_rms_norm(k_BxTxKxH, self.k_norm[...], cfg.norm_eps)
    q_BxTxNxH = rope(q_BxTxNxH, positions, cfg)
    k_BxTxKxH = rope(k_BxTxKxH, positions, cfg)
    # Keys/values live as [B, K, S, H]: batch and head lead, so the attention matmuls read
    # the cache in place (a [B, S, K, H] cache was transposed, i.e. copied, every decode step).
    k_BxKxTxH = k_BxTxKxH.transpose(0, 2, 1, 3)
    v_BxKxTxH = v_BxTxKxH.transpose(0, 2, 1, 3)
    if cache is not None:
      # Every row writes the same slots: left padding keeps the batch aligned.
      start = (0, 0, cache_slot, 0)
      k_BxKxSxH = jax.lax.dynamic_update_slice(
          cache.k_BxKxSxH, k_BxKxTxH.astype(cache.k_BxKxSxH.dtype), start)
      v_BxKxSxH = jax.lax.dynamic_update_slice(
          cache.v_BxKxSxH, v_BxKxTxH.astype(cache.v_BxKxSxH.dtype), start)
      cache = LayerCache(k_BxKxSxH, v_BxKxSxH)
      k_BxKxSxH = constrain(k_BxKxSxH, ("batch", "kv_heads", "seq", "head_dim"))
      v_BxKxSxH = constrain(v_BxKxSxH, ("batch", "kv_heads", "seq", "head_dim"))
    else:
      k_BxKxSxH, v_BxKxSxH = k_BxKxTxH, v_BxKxTxH
    path = attention_path(cfg.attention, q_BxTxNxH.shape[1])
    if path == "dot_product":
      # [B, S, K, H] views of the keys and values: a copy, paid where it buys the fused kernel.
      out_BxTxNxH = jax.nn.dot_product_attention(
          q_BxTxNxH, k_BxKxSxH.transpose(0, 2, 1, 3).astype(dt),
          v_BxKxSxH.transpose(0, 2, 1, 3).astype(dt), mask=mask_BxTxS[:, None])
    else:
      out_BxTxNxH = _einsum_attention(q_BxTxNxH, k_BxKxSxH, v_BxKxSxH, mask_BxTxS,
                                      multiply_reduce=path == "einsum_cpu")
    out_BxTxD = project(self, "o", out_BxTxNxH, in_dims=2)
    return out_BxTxD, cache


class MLP(nnx.Module):
  """SwiGLU (Llama) or biased GELU (GPT-J)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    D, F, pd = cfg.d_model, cfg.ffn_dim, cfg.jnp_param_dtype
    self.gated = cfg.block_type == "llama"
    if self.gated:
      self.gate = _param(rngs, _normal(D), (D, F), pd, ("embed", "mlp"))
      self.up = _param(rngs, _normal(D), (D, F), pd, ("embed", "mlp"))
      self.down = _param(rngs, _normal(F), (F, D), pd, ("mlp", "embed"))
    else:
      zeros = jax.nn.initializers.zeros
      self.fc_in = _param(rngs, _normal(D), (D, F), pd, ("embed", "mlp"))
      self.fc_in_bias = _param(rngs, zeros, (F,), pd, ("mlp",))
      self.fc_out = _param(rngs, _normal(F), (F, D), pd, ("mlp", "embed"))
      self.fc_out_bias = _param(rngs, zeros, (D,), pd, ("norm",))
    _add_adapters(self, cfg, rngs, {"gate": ("embed", "mlp"), "up": ("embed", "mlp"),
                                    "down": ("mlp", "embed"), "fc_in": ("embed", "mlp"),
                                    "fc_out": ("mlp", "embed")})

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    dt = x_BxTxD.dtype
    if self.gated:
      g_BxTxF = jax.nn.silu(project(self, "gate", x_BxTxD))
      h_BxTxF = g_BxTxF * project(self, "up", x_BxTxD)
      h_BxTxF = constrain(h_BxTxF, ("batch", "seq", "mlp"))
      return project(self, "down", h_BxTxF)
    h_BxTxF = project(self, "fc_in", x_BxTxD) + self.fc_in_bias[...].astype(dt)
    h_BxTxF = constrain(jax.nn.gelu(h_BxTxF, approximate=True), ("batch", "seq", "mlp"))
    return project(self, "fc_out", h_BxTxF) + self.fc_out_bias[...].astype(dt)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.parallel = cfg.block_type == "gptj"
    self.attn_norm = Norm(cfg, rngs)
    self.attn = Attention(cfg, rngs)
    if not self.parallel:
      self.mlp_norm = Norm(cfg, rngs)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_BxTxD, positions, mask_BxTxS, cache, cache_slot):
    h_BxTxD = self.attn_norm(x_BxTxD)
    attn_BxTxD, cache = self.attn(h_BxTxD, positions, mask_BxTxS, cache, cache_slot)
    if self.parallel:  # GPT-J: x + attn(ln(x)) + mlp(ln(x)), one shared LayerNorm
      x_BxTxD = x_BxTxD + attn_BxTxD + self.mlp(h_BxTxD)
    else:
      x_BxTxD = x_BxTxD + attn_BxTxD
      x_BxTxD = x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD))
    return constrain(x_BxTxD, ("batch", "seq", "embed_act")), cache


class Decoder(nnx.Module):
  """Token ids -> hidden states (``__call__``) -> logits (``logits``)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    V, D, pd = cfg.vocab_size, cfg.d_model, cfg.jnp_param_dtype
    # std 1/sqrt(D): unit-norm token vectors, and unit-scale logits when the table is tied.
    self.embed = _param(rngs, _normal(D), (V, D), pd, ("vocab", "embed"))
    blocks = [Block(cfg, rngs) for _ in range(cfg.num_layers)]
    # Stacked from the same per-layer draws: a scanned model holds the loop model's values.
    self.layers = stack_blocks(blocks) if cfg.scan_layers else nnx.List(blocks)
    self.final_norm = Norm(cfg, rngs)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, _normal(D), (D, V), pd, ("embed", "vocab"))
    if cfg.lm_head_bias:
      self.lm_head_bias = _param(rngs, jax.nn.initializers.zeros, (V,), pd, ("vocab",))

  def __call__(self, tokens_BxT: jax.Array, positions: jax.Array, mask_BxTxS: jax.Array,
               cache: Cache | None = None, cache_slot=0) -> tuple[jax.Array, Cache | None]:
    """Final-normed hidden states and the updated cache (None when no cache was given).

    ``mask_BxTxS[b, t, s]`` is True where query t may attend key s; keys are the
    T new tokens without a cache, or the cache's S slots after writing the T new
    tokens at ``cache_slot`` with one.
    """
    cfg = self.cfg
    # Gather from a whole table: a gather over a vocab-sharded table makes XLA replicate anyway.
    table_VxD = constrain(self.embed[...], (None, None)).astype(cfg.jnp_dtype)
    x_BxTxD = table_VxD[tokens_BxT]
    x_BxTxD = constrain(x_BxTxD, ("batch", "seq", "embed_act"))
    if cfg.scan_layers:
      x_BxTxD, cache = self._scan(x_BxTxD, positions, mask_BxTxS, cache, cache_slot)
      return self.final_norm(x_BxTxD), cache
    new_cache = [] if cache is not None else None
    for i, block in enumerate(self.layers):
      layer_cache = cache[i] if cache is not None else None
      if cfg.remat:
        # jax.checkpoint of a pure function of the block's state (nnx.remat writes the state
        # back, which fails when part of it, a LoRA model's frozen base, is not differentiated).
        gd, st = nnx.split(block)
        run = lambda st, *a, gd=gd: nnx.merge(gd, st)(*a, cache_slot)
        x_BxTxD, layer_cache = _remat(run, cfg)(st, x_BxTxD, positions, mask_BxTxS, layer_cache)
      else:
        x_BxTxD, layer_cache = block(x_BxTxD, positions, mask_BxTxS, layer_cache, cache_slot)
      if new_cache is not None:
        new_cache.append(layer_cache)
    return self.final_norm(x_BxTxD), new_cache

  def _scan(self, x_BxTxD, positions, mask_BxTxS, cache: StackedCache | None, cache_slot):
    """The stacked layers as one ``jax.lax.scan``: the activations are the carry; layer l's
    parameter slices and cache slice are its input, its updated cache slice its output (the
    layout Flax's scanned models and MaxText give a cache). Writing the new slots into a
    stacked carry instead made XLA copy the whole stacked cache in every layer's step."""
    graphdef, stacked = nnx.split(self.layers)

    def body(x_BxTxD, layer_in):
      st, layer_cache = layer_in
      return nnx.merge(graphdef, st)(x_BxTxD, positions, mask_BxTxS, layer_cache, cache_slot)

    if self.cfg.remat:
      body = _remat(body, self.cfg, prevent_cse=False)  # scan already keeps steps apart
    per_layer = LayerCache(*cache) if cache is not None else None
    x_BxTxD, per_layer = jax.lax.scan(body, x_BxTxD, (stacked, per_layer))
    return x_BxTxD, StackedCache(*per_layer) if cache is not None else None

  def head(self, dt) -> tuple[jax.Array, jax.Array | None]:
    """The output projection ``[D, V]`` in compute dtype ``dt`` and its bias (or None)."""
    w_DxV = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
    bias_V = self.lm_head_bias[...] if self.cfg.lm_head_bias else None
    return w_DxV.astype(dt), bias_V

  def logits(self, h_BxTxD: jax.Array) -> jax.Array:
    """float32 logits; callers pick the positions first so no [B, L, V] buffer is needed."""
    return head_logits(h_BxTxD, *self.head(h_BxTxD.dtype))


def head_logits(h_BxTxD: jax.Array, w_DxV: jax.Array, bias_V: jax.Array | None) -> jax.Array:
  logits_BxTxV = dense(h_BxTxD, w_DxV).astype(jnp.float32)
  if bias_V is not None:
    logits_BxTxV += bias_V.astype(jnp.float32)
  return logits_BxTxV


def causal_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """Causal mask that also keeps packed examples apart; segment 0 is padding."""
  seg_q = segment_ids_BxT[:, :, None]
  seg_k = segment_ids_BxT[:, None, :]
  T = segment_ids_BxT.shape[1]
  causal_TxT = jnp.tril(jnp.ones((T, T), dtype=bool))
  return causal_TxT[None] & (seg_q == seg_k) & (seg_k > 0)


def _remat(fn, cfg: ModelConfig, prevent_cse: bool = True):
  """``fn`` rematerialised in the backward pass under ``cfg.remat_policy``."""
  return jax.checkpoint(fn, policy=getattr(jax.checkpoint_policies, cfg.remat_policy),
                        prevent_cse=prevent_cse)


def stack_blocks(blocks: list[Block]) -> Block:
  """One Block whose every parameter is the blocks' parameters stacked on a leading axis
  (logical axis "layers"), for ``Decoder._scan``; not callable as a plain block."""
  graphdef, _ = nnx.split(blocks[0])
  flats = [nnx.to_flat_state(nnx.state(b)) for b in blocks]
  stacked = []
  for i, (path, var) in enumerate(flats[0]):
    value = jnp.stack([flat[i][1].get_value() for flat in flats])
    axes = var.get_metadata().get("axes") or (None,) * (value.ndim - 1)
    new = var.replace(value)
    new.set_metadata("axes", ("layers",) + tuple(axes))
    stacked.append((path, new))
  return nnx.merge(graphdef, nnx.from_flat_state(stacked))
