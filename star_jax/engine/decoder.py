"""The decoder: one Flax NNX definition for the Llama family, Gemma 2/3 and the GPT-J block.

The same module runs a full forward (training, evaluation) and cached decoding
(prefill + one token at a time): pass ``cache`` and the slot to write and the
new keys/values land there, attention reads the whole cache under ``mask``.
With ``cfg.scan_layers`` the layers are one Block whose parameters are stacked
``[num_layers, ...]`` and run through ``jax.lax.scan`` (one block to compile). The layers
(engine/layers.py, engine/attention.py) store kernels ``[in, ..., out]`` with LoRA adapters
beside the targeted ones. Gemma's sliding-window layers differ from its full ones only in
data (their mask and RoPE table), so a scanned model takes a per-layer flag as scan input.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from star_jax.engine.attention import Attention, attention_path, window_mask
from star_jax.engine.kv_cache import Cache, LayerCache, StackedCache
from star_jax.engine.layers import MLP, Norm, dense, normal, param
from star_jax.engine.model_config import ModelConfig
from star_jax.engine.positions import rotary
from star_jax.engine.sharding import constrain

__all__ = ["Decoder", "attention_path", "causal_mask", "dense", "head_logits"]


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.parallel = cfg.block_type == "gptj"
    self.sandwich = cfg.block_type == "gemma"  # norms after attention and MLP too
    self.attn_norm = Norm(cfg, rngs)
    self.attn = Attention(cfg, rngs)
    if not self.parallel:
      self.mlp_norm = Norm(cfg, rngs)
    if self.sandwich:
      self.post_attn_norm = Norm(cfg, rngs)
      self.post_mlp_norm = Norm(cfg, rngs)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_BxTxD, rot, mask_BxTxS, cache, cache_slot):
    h_BxTxD = self.attn_norm(x_BxTxD)
    attn_BxTxD, cache = self.attn(h_BxTxD, rot, mask_BxTxS, cache, cache_slot)
    if self.parallel:  # GPT-J: x + attn(ln(x)) + mlp(ln(x)), one shared LayerNorm
      x_BxTxD = x_BxTxD + attn_BxTxD + self.mlp(h_BxTxD)
    elif self.sandwich:  # Gemma: x + norm(attn(norm(x))), then the same around the MLP
      x_BxTxD = x_BxTxD + self.post_attn_norm(attn_BxTxD)
      x_BxTxD = x_BxTxD + self.post_mlp_norm(self.mlp(self.mlp_norm(x_BxTxD)))
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
    self.embed = param(rngs, normal(D), (V, D), pd, ("vocab", "embed"))
    blocks = [Block(cfg, rngs) for _ in range(cfg.num_layers)]
    # Stacked from the same per-layer draws: a scanned model holds the loop model's values.
    self.layers = stack_blocks(blocks) if cfg.scan_layers else nnx.List(blocks)
    self.final_norm = Norm(cfg, rngs)
    if not cfg.tie_embeddings:
      self.lm_head = param(rngs, normal(D), (D, V), pd, ("embed", "vocab"))
    if cfg.lm_head_bias:
      self.lm_head_bias = param(rngs, jax.nn.initializers.zeros, (V,), pd, ("vocab",))

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
    if cfg.block_type == "gemma":  # sqrt(D) rounded to the compute dtype, as transformers does
      x_BxTxD = x_BxTxD * jnp.asarray(math.sqrt(cfg.d_model), cfg.jnp_dtype)
    x_BxTxD = constrain(x_BxTxD, ("batch", "seq", "embed_act"))
    sliding = cfg.sliding_layers
    # Per layer kind, once: (RoPE table, mask); a sliding layer's mask is cut to its window.
    kinds = {False: (rotary(positions, cfg), mask_BxTxS)}
    if any(sliding):
      kinds[True] = (rotary(positions, cfg, local=True),
                     window_mask(mask_BxTxS, cfg.sliding_window))
    if cfg.scan_layers:
      x_BxTxD, cache = self._scan(x_BxTxD, kinds, cache, cache_slot)
      return self.final_norm(x_BxTxD), cache
    new_cache = [] if cache is not None else None
    for i, block in enumerate(self.layers):
      layer_cache = cache[i] if cache is not None else None
      rot, mask_i = kinds[sliding[i]]
      if cfg.remat:
        # jax.checkpoint of a pure function of the block's state (nnx.remat writes the state
        # back, which fails when part of it, a LoRA model's frozen base, is not differentiated).
        gd, st = nnx.split(block)
        run = lambda st, *a, gd=gd: nnx.merge(gd, st)(*a, cache_slot)
        x_BxTxD, layer_cache = _remat(run, cfg)(st, x_BxTxD, rot, mask_i, layer_cache)
      else:
        x_BxTxD, layer_cache = block(x_BxTxD, rot, mask_i, layer_cache, cache_slot)
      if new_cache is not None:
        new_cache.append(layer_cache)
    return self.final_norm(x_BxTxD), new_cache

  def _scan(self, x_BxTxD, kinds, cache: StackedCache | None, cache_slot):
    """The stacked layers as one ``jax.lax.scan``: the activations are the carry; layer l's
    parameter slices, cache slice and kind (sliding or not) are its input, its updated cache
    slice its output (the layout Flax's scanned models and MaxText give a cache). Writing the
    new slots into a stacked carry instead made XLA copy the whole stacked cache in every
    layer's step."""
    graphdef, stacked = nnx.split(self.layers)

    def body(x_BxTxD, layer_in):
      st, layer_cache, sliding = layer_in
      if len(kinds) == 1:
        rot, mask_BxTxS = kinds[False]
      else:  # a traced flag: pick this layer's table and mask
        rot, mask_BxTxS = jax.tree.map(lambda a, b: jnp.where(sliding, a, b), kinds[True],
                                       kinds[False])
      return nnx.merge(graphdef, st)(x_BxTxD, rot, mask_BxTxS, layer_cache, cache_slot)

    if self.cfg.remat:
      body = _remat(body, self.cfg, prevent_cse=False)  # scan already keeps steps apart
    per_layer = LayerCache(*cache) if cache is not None else None
    sliding_L = jnp.asarray(self.cfg.sliding_layers)
    x_BxTxD, per_layer = jax.lax.scan(body, x_BxTxD, (stacked, per_layer, sliding_L))
    return x_BxTxD, StackedCache(*per_layer) if cache is not None else None

  def head(self, dt) -> tuple[jax.Array, jax.Array | None]:
    """The output projection ``[D, V]`` in compute dtype ``dt`` and its bias (or None)."""
    w_DxV = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]
    bias_V = self.lm_head_bias[...] if self.cfg.lm_head_bias else None
    return w_DxV.astype(dt), bias_V

  def logits(self, h_BxTxD: jax.Array) -> jax.Array:
    """float32 logits; callers pick the positions first so no [B, L, V] buffer is needed."""
    return head_logits(h_BxTxD, *self.head(h_BxTxD.dtype), softcap=self.cfg.final_softcap)


def head_logits(h_BxTxD: jax.Array, w_DxV: jax.Array, bias_V: jax.Array | None,
                softcap: float | None = None) -> jax.Array:
  """float32 logits of the head; ``softcap`` (Gemma 2's final cap): cap * tanh(logits / cap)."""
  logits_BxTxV = dense(h_BxTxD, w_DxV).astype(jnp.float32)
  if bias_V is not None:
    logits_BxTxV += bias_V.astype(jnp.float32)
  if softcap is not None:
    logits_BxTxV = jnp.tanh(logits_BxTxV / softcap) * softcap
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
