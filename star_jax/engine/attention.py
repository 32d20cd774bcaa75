"""Grouped-query attention over new tokens or a KV cache, and Gemma's sliding window.

Keys and values live as ``[B, K, S, H]``; ``mask_BxTxS`` says which keys each query sees.
A sliding-window layer sees the same keys cut to its window (``window_mask``), measured in
the tokens of the text, not in cache slots, so prefix reuse and left padding keep it exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from star_jax.engine.kv_cache import LayerCache
from star_jax.engine.layers import add_adapters, norm_scale, normal, param, project, rms_norm
from star_jax.engine.model_config import ModelConfig
from star_jax.engine.positions import apply_rotary
from star_jax.engine.sharding import constrain
from star_jax.runtime.compiling import target_platform


def attention_path(choice: str, T: int, softcap: float | None = None) -> str:
  """How T query tokens attend: "dot_product" (jax.nn.dot_product_attention), "einsum", or
  "einsum_cpu" (one grouped-query token as multiply-and-reduce, for XLA:CPU). Soft-capped
  scores (Gemma 2) always take the einsum path: the fused kernel has no cap."""
  cpu = target_platform() == "cpu"
  if choice == "dot_product" and T > 1 and softcap is None:
    return "dot_product"
  if choice == "auto" and T > 1 and not cpu and softcap is None:
    return "dot_product"
  return "einsum_cpu" if cpu and T == 1 else "einsum"


def window_mask(mask_BxTxS: jax.Array, window: int) -> jax.Array:
  """``mask_BxTxS`` cut to each query's last ``window`` visible keys (itself included).

  A query's visible keys are the tokens of its text up to itself, in slot order, whatever
  lies between them (left padding, the gap after a reused prefix, other packed segments): the
  key with d visible keys after it is d tokens back, and a window of W keeps d < W (as
  transformers' ``kv_idx > q_idx - sliding_window``).
  """
  seen_BxTxS = jnp.cumsum(mask_BxTxS, axis=-1, dtype=jnp.int32)
  after_BxTxS = seen_BxTxS[..., -1:] - seen_BxTxS
  return mask_BxTxS & (after_BxTxS < window)


def _einsum_attention(q_BxTxNxH, k_BxKxSxH, v_BxKxSxH, mask_BxTxS, multiply_reduce: bool,
                      scale_root: float, softcap: float | None):
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
    scores_BxKxGxTxS = scores_BxKxGxS[:, :, :, None] / scale_root
  else:
    scores_BxKxGxTxS = jnp.einsum("bkgth,bksh->bkgts", q_BxKxGxTxH, k_BxKxSxH.astype(dt),
                                  preferred_element_type=jnp.float32) / scale_root
  if softcap is not None:
    scores_BxKxGxTxS = jnp.tanh(scores_BxKxGxTxS / softcap) * softcap
  scores_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], scores_BxKxGxTxS, -1e30)
  probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(dt)
  out_BxKxGxTxH = jnp.einsum("bkgts,bksh->bkgth", probs_BxKxGxTxS, v_BxKxSxH.astype(dt))
  return out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    D, N, K, H, pd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_param_dtype
    self.q = param(rngs, normal(D), (D, N, H), pd, ("embed", "heads", "head_dim"))
    self.k = param(rngs, normal(D), (D, K, H), pd, ("embed", "kv_heads", "head_dim"))
    self.v = param(rngs, normal(D), (D, K, H), pd, ("embed", "kv_heads", "head_dim"))
    self.o = param(rngs, normal(N * H), (N, H, D), pd, ("heads", "head_dim", "embed"))
    if cfg.qkv_bias:
      zeros = jax.nn.initializers.zeros
      self.q_bias = param(rngs, zeros, (N, H), pd, ("heads", "head_dim"))
      self.k_bias = param(rngs, zeros, (K, H), pd, ("kv_heads", "head_dim"))
      self.v_bias = param(rngs, zeros, (K, H), pd, ("kv_heads", "head_dim"))
    if cfg.qk_norm:
      self.q_norm = norm_scale(cfg, H)
      self.k_norm = norm_scale(cfg, H)
    add_adapters(self, cfg, rngs, {"q": ("embed", "heads"), "k": ("embed", "kv_heads"),
                                   "v": ("embed", "kv_heads"), "o": ("heads", "embed")})

  def __call__(self, x_BxTxD, rot, mask_BxTxS, cache: LayerCache | None,
               cache_slot) -> tuple[jax.Array, LayerCache | None]:
    """``rot``: the (sin, cos) tables of the queries' positions (``positions.rotary``)."""
    cfg, dt = self.cfg, x_BxTxD.dtype
    q_BxTxNxH = project(self, "q", x_BxTxD)
    k_BxTxKxH = project(self, "k", x_BxTxD)
    v_BxTxKxH = project(self, "v", x_BxTxD)
    if cfg.qkv_bias:
      q_BxTxNxH += self.q_bias[...].astype(dt)
      k_BxTxKxH += self.k_bias[...].astype(dt)
      v_BxTxKxH += self.v_bias[...].astype(dt)
    if cfg.qk_norm:
      q_BxTxNxH = rms_norm(q_BxTxNxH, self.q_norm[...], cfg.norm_eps, cfg.norm_plus_one)
      k_BxTxKxH = rms_norm(k_BxTxKxH, self.k_norm[...], cfg.norm_eps, cfg.norm_plus_one)
    q_BxTxNxH = apply_rotary(q_BxTxNxH, rot, cfg)
    k_BxTxKxH = apply_rotary(k_BxTxKxH, rot, cfg)
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
    path = attention_path(cfg.attention, q_BxTxNxH.shape[1], cfg.attn_softcap)
    scale_root = math.sqrt(cfg.query_pre_attn_scalar or cfg.head_dim)
    if path == "dot_product":
      # [B, S, K, H] views of the keys and values: a copy, paid where it buys the fused kernel.
      out_BxTxNxH = jax.nn.dot_product_attention(
          q_BxTxNxH, k_BxKxSxH.transpose(0, 2, 1, 3).astype(dt),
          v_BxKxSxH.transpose(0, 2, 1, 3).astype(dt), mask=mask_BxTxS[:, None],
          scale=None if cfg.query_pre_attn_scalar is None else 1.0 / scale_root)
    else:
      out_BxTxNxH = _einsum_attention(q_BxTxNxH, k_BxKxSxH, v_BxKxSxH, mask_BxTxS,
                                      path == "einsum_cpu", scale_root, cfg.attn_softcap)
    out_BxTxD = project(self, "o", out_BxTxNxH, in_dims=2)
    return out_BxTxD, cache
