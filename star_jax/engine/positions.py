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
  rotary_angles(positions, rope_dim, base)  [B, T, rope_dim // 2] rotation angles

The trainer and the sampler call the same scheme, so both see exactly the same positions.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp


class PositionScheme(Protocol):
  coords: int

  def of_tokens(self, tokens_BxT: jax.Array, starts_BxT: jax.Array,
                key: jax.Array | None = None) -> jax.Array: ...

  def advance(self, position_BxC: jax.Array, token_B: jax.Array) -> jax.Array: ...

  def rotary_angles(self, positions_BxTxC: jax.Array, rope_dim: int,
                    base: float) -> jax.Array: ...


def segment_starts(segment_ids_BxT: jax.Array) -> jax.Array:
  """True at the first token of every packed segment."""
  prev_BxT = jnp.pad(segment_ids_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  return segment_ids_BxT != prev_BxT


def index_angles(positions_BxT: jax.Array, rope_dim: int, base: float) -> jax.Array:
  """Standard RoPE: [B, T, rope_dim // 2] angles of the index positions."""
  inv_freq_R = base ** (-jnp.arange(0, rope_dim, 2, dtype=jnp.float32) / rope_dim)
  return positions_BxT[..., None].astype(jnp.float32) * inv_freq_R
