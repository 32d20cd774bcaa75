"""Where each token sits, as rotary embedding sees it: the index in its text by default, or a
position scheme computed from the tokens themselves (a task's hook, `Task.positions`).

A scheme is a hashable object (it is part of `ModelConfig`, so of every compile key) with

  coords                        C: a position is C numbers ([B, T, C] arrays)
  of_tokens(tokens, starts, key)  positions of a whole text; counting restarts where
                                `starts` is true (a packed segment's first token, a
                                left-padded prompt's first real token). The trainer passes
                                a per-step `key` (a scheme may draw random gaps in
                                training); the sampler's prefill passes none.
  advance(position, token)      the position of `token`, fed right after a token at
                                `position` (the sampler's decode step)
  random                        (optional, default False) whether `of_tokens` draws from
                                its `key`: then a loss that compares two forward passes of
                                one batch must give both the same key (`draws_positions`)
  rotary_angles(positions, rope_dim, base)  [B, T, rope_dim // 2] rotation angles

The trainer and the sampler call the same scheme, so both see exactly the same positions.
``rope`` rotates queries and keys by the angles of either (index angles with the checkpoint's
RoPE scaling: plain, linear, Llama 3.1's rule, or llama.cpp's per-frequency factors).
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from star_jax.engine.model_config import ModelConfig


class PositionScheme(Protocol):
  coords: int

  def of_tokens(self, tokens_BxT: jax.Array, starts_BxT: jax.Array,
                key: jax.Array | None = None) -> jax.Array: ...

  def advance(self, position_BxC: jax.Array, token_B: jax.Array) -> jax.Array: ...

  def rotary_angles(self, positions_BxTxC: jax.Array, rope_dim: int,
                    base: float) -> jax.Array: ...


def draws_positions(cfg: ModelConfig) -> bool:
  """Whether a training forward pass of ``cfg``'s model draws its positions from a key."""
  return cfg.positions is not None and bool(getattr(cfg.positions, "random", False))


def segment_starts(segment_ids_BxT: jax.Array) -> jax.Array:
  """True at the first token of every packed segment."""
  prev_BxT = jnp.pad(segment_ids_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  return segment_ids_BxT != prev_BxT


def index_angles(positions_BxT: jax.Array, rope_dim: int, base: float,
                 scaling: tuple | None = None) -> jax.Array:
  """Standard RoPE: [B, T, rope_dim // 2] angles of the index positions."""
  if scaling is None:
    inv_freq_R = base ** (-jnp.arange(0, rope_dim, 2, dtype=jnp.float32) / rope_dim)
  else:
    inv_freq_R = jnp.asarray(inv_frequencies(rope_dim, base, scaling))
  return positions_BxT[..., None].astype(jnp.float32) * inv_freq_R


def inv_frequencies(rope_dim: int, base: float, scaling: tuple | None = None) -> np.ndarray:
  """RoPE's [rope_dim // 2] inverse frequencies, with ``ModelConfig.rope_scaling`` applied.

  "llama3" is Llama 3.1's rule (transformers' ``_compute_llama3_parameters``): wavelengths
  shorter than ``original / high_freq_factor`` stay, longer than ``original / low_freq_factor``
  are slowed by ``factor``, and those between are interpolated. "freq_factors" divides each
  frequency by its factor, as llama.cpp applies a GGUF's ``rope_freqs`` tensor.
  """
  inv_freq_R = (1.0 / (base ** (np.arange(0, rope_dim, 2, dtype=np.float32) / rope_dim))
                ).astype(np.float32)
  if scaling is None:
    return inv_freq_R
  kind, *args = scaling
  if kind == "linear":  # positions divided by the factor (Gemma 3's full-attention layers)
    return (inv_freq_R / np.float32(args[0])).astype(np.float32)
  if kind == "freq_factors":
    return (inv_freq_R / np.asarray(args, np.float32)).astype(np.float32)
  if kind != "llama3":
    raise ValueError(f"unknown RoPE scaling {kind!r}")
  factor, low, high, original = (float(a) for a in args)
  wavelen_R = 2 * np.pi / inv_freq_R
  slowed_R = np.where(wavelen_R > original / low, inv_freq_R / factor, inv_freq_R)
  smooth_R = (original / wavelen_R - low) / (high - low)
  smoothed_R = (1 - smooth_R) * slowed_R / factor + smooth_R * slowed_R
  medium_R = ~(wavelen_R < original / high) & ~(wavelen_R > original / low)
  return np.where(medium_R, smoothed_R, slowed_R).astype(np.float32)


def rotary(positions: jax.Array, cfg: ModelConfig, local: bool = False
           ) -> tuple[jax.Array, jax.Array] | None:
  """(sin, cos) ``[B, T, 1, R]`` tables (R = rope_dim // 2) of ``positions``, computed once per
  forward and shared by every layer; None without RoPE (NoPE).

  ``positions`` are ``[B, T]`` indices, or ``[B, T, C]`` coordinates of the config's
  position scheme, which then turns them into angles. ``local``: a sliding-window layer's
  table (Gemma 3: its own base ``cfg.local_rope_base`` and no scaling; ``cfg.rope_scaling``
  belongs to the full-attention layers).
  """
  if not cfg.use_rope:  # NoPE: order comes from the causal mask alone
    return None
  rd = cfg.rope_dim
  base = (cfg.local_rope_base or cfg.rope_base) if local else cfg.rope_base
  scaling = None if local else cfg.rope_scaling
  if cfg.positions is not None:
    angle_BxTxR = cfg.positions.rotary_angles(positions, rd, base)
  else:
    angle_BxTxR = index_angles(positions, rd, base, scaling)  # R = rd // 2
  return jnp.sin(angle_BxTxR)[:, :, None, :], jnp.cos(angle_BxTxR)[:, :, None, :]


def apply_rotary(x_BxTxNxH: jax.Array, rot: tuple[jax.Array, jax.Array] | None,
                 cfg: ModelConfig) -> jax.Array:
  """Rotary embedding on the first ``cfg.rope_dim`` dims (rotate-half or interleaved pairs)."""
  if rot is None:
    return x_BxTxNxH
  sin, cos = rot
  rd = cfg.rope_dim
  x = x_BxTxNxH.astype(jnp.float32)
  rot_, rest = x[..., :rd], x[..., rd:]
  if cfg.rope_interleaved:
    x1, x2 = rot_[..., 0::2], rot_[..., 1::2]
    rot_ = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot_.shape)
  else:
    x1, x2 = rot_[..., : rd // 2], rot_[..., rd // 2:]
    rot_ = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return jnp.concatenate([rot_, rest], axis=-1).astype(x_BxTxNxH.dtype)


def rope(x_BxTxNxH: jax.Array, positions: jax.Array, cfg: ModelConfig) -> jax.Array:
  """``x`` rotated by the (full-attention) angles of ``positions``."""
  return apply_rotary(x_BxTxNxH, rotary(positions, cfg), cfg)
