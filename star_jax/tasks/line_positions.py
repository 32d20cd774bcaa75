"""(line, column) positions for text laid out in lines: a `PositionScheme` for the engine.

A token's position is the pair (line, column), lines ending after any of
``break_ids``; half the rotary frequencies turn with the line, half with the
column. Text whose steps copy and shift the line above (the arithmetic
scratchpad) then needs the same relative offsets whatever its length.
``right_aligned`` counts columns from the end of the line above; ``jitter``
spaces lines and columns by random gaps in training. The arithmetic task
offers it (``task_options.positions="line_column"``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LineColumnPositions:
  """(line, column, index in line) positions; rotary angles from the line and the column."""

  break_ids: tuple[int, ...]  # tokens that end a line
  right_aligned: bool = False
  # In training, consecutive lines and columns are jitter or jitter + 1 apart (random per
  # row); in sampling jitter + 0.5. 0: exactly 1 apart.
  jitter: int = 0
  coords = 3

  def __post_init__(self):
    if not self.break_ids:
      raise ValueError("line_column positions need break_ids (the tokens that end a line)")
    if self.jitter < 0:
      raise ValueError(f"position jitter must be >= 0, got {self.jitter}")
    object.__setattr__(self, "break_ids", tuple(int(i) for i in self.break_ids))

  def of_tokens(self, tokens_BxT, starts_BxT, key=None) -> jax.Array:
    """Positions of whole texts (the trainer's, with the step's ``key``; the prefill's)."""
    pos_BxTx3 = line_column(tokens_BxT, starts_BxT, self.break_ids, self.right_aligned)
    return jitter(pos_BxTx3, self.jitter, key)

  def advance(self, position_Bx3, token_B) -> jax.Array:
    """The sampler's position of ``token_B``, fed right after the token at ``position_Bx3``."""
    step = self.jitter + 0.5 if self.jitter else 1
    return advance(position_Bx3, token_B, self.break_ids, self.right_aligned, step)

  def rotary_angles(self, positions_BxTx3, rope_dim: int, base: float) -> jax.Array:
    """The first half of the frequencies turn with the column, the second half with the
    line, each half its own geometric ladder from 1 rad per step."""
    if rope_dim % 4:
      raise ValueError(f"line_column positions split the rotary dims in two halves of pairs: "
                       f"rotary_dim {rope_dim} must be a multiple of 4")
    half = rope_dim // 4
    ladder = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    inv_freq_R = jnp.concatenate([ladder, ladder])
    coord_R = jnp.asarray([1] * half + [0] * half)  # column, then line
    pos_BxTxR = jnp.take(positions_BxTx3, coord_R, axis=-1).astype(jnp.float32)
    return pos_BxTxR * inv_freq_R


def line_column(tokens_BxT: jax.Array, start_BxT: jax.Array, break_ids: Sequence[int],
                right_aligned: bool = False) -> jax.Array:
  """``[B, T, 3]`` (line, column, index in line) of every token.

  A line-break token opens the next line at index 0; the tokens after it take
  indices 1, 2, ... (the first line, which no break opens, also starts at 1).
  The column is the index, or with ``right_aligned`` the index minus the last
  index of the line above: lines then line up at their ends, so in a scratchpad
  whose lines shrink by one token per step the digits that stay put keep their
  column. Counting restarts at every token where ``start_BxT`` is true (a
  packed segment's first token, a left-padded prompt's first real token); tokens
  before the first start get positions too, which callers mask out.
  """
  T = tokens_BxT.shape[1]
  idx_T = jnp.arange(T, dtype=jnp.int32)
  brk_BxT = jnp.isin(tokens_BxT, jnp.asarray(tuple(break_ids), jnp.int32)).astype(jnp.int32)
  last_start_BxT = jax.lax.cummax(jnp.where(start_BxT.astype(bool), idx_T, 0), axis=1)
  last_brk_BxT = jax.lax.cummax(jnp.where(brk_BxT > 0, idx_T, -1), axis=1)  # at or before t
  line_start_BxT = jnp.maximum(last_brk_BxT, last_start_BxT - 1)
  index_BxT = idx_T - line_start_BxT
  breaks_BxT = jnp.cumsum(brk_BxT, axis=1, dtype=jnp.int32)  # at or before t
  before_start_BxT = jnp.take_along_axis(breaks_BxT - brk_BxT, last_start_BxT, axis=1)
  column_BxT = index_BxT
  if right_aligned:
    # The line above ends at line_start - 1; its last index is that token's index.
    above_BxT = jnp.take_along_axis(index_BxT, jnp.maximum(line_start_BxT - 1, 0), axis=1)
    first_line_BxT = line_start_BxT <= last_start_BxT - 1
    column_BxT = index_BxT - jnp.where(first_line_BxT, 0, above_BxT)
  return jnp.stack([breaks_BxT - before_start_BxT, column_BxT, index_BxT], axis=-1)


def advance(position_Bx3: jax.Array, token_B: jax.Array, break_ids: Sequence[int],
            right_aligned: bool = False, column_step: float = 1) -> jax.Array:
  """The (line, column, index) of ``token_B``, coming right after a token at ``position_Bx3``."""
  brk_B = jnp.isin(token_B, jnp.asarray(tuple(break_ids), jnp.int32))
  line_B, column_B, index_B = position_Bx3[:, 0], position_Bx3[:, 1], position_Bx3[:, 2]
  new_line_column_B = -index_B * column_step if right_aligned else jnp.zeros_like(column_B)
  return jnp.stack([line_B + brk_B * column_step,
                    jnp.where(brk_B, new_line_column_B, column_B + column_step),
                    jnp.where(brk_B, 0, index_B + 1)], axis=-1)


def break_ids_of(tokenizer, vocab_size: int | None = None) -> tuple[int, ...]:
  """Ids whose text contains a newline: the tokens that end a line."""
  n = tokenizer.vocab_size if vocab_size is None else min(vocab_size, tokenizer.vocab_size)
  return tuple(i for i in range(n) if "\n" in tokenizer.decode([i]))


def jitter(pos_BxTx3: jax.Array, gap: int, key: jax.Array | None = None) -> jax.Array:
  """Lines and columns spaced by random gaps of ``gap`` or ``gap + 1`` (one map per row and
  axis, shared by all its tokens, so "same column, line above" stays exact), or by the
  mean gap without a key. Neighbours one and two apart stay apart (gaps of 2-3 give 2-3
  and 4-6), while the distance from a landmark no longer counts the tokens between."""
  if gap <= 0:
    return pos_BxTx3
  mean = gap + 0.5
  if key is None:
    return jnp.stack([pos_BxTx3[..., 0] * mean, pos_BxTx3[..., 1] * mean,
                      pos_BxTx3[..., 2].astype(jnp.float32)], axis=-1)
  B, T = pos_BxTx3.shape[:2]
  out = []
  for axis, k in zip((0, 1), jax.random.split(key)):
    gaps_BxW = jax.random.randint(k, (B, 2 * T), gap, gap + 2).astype(jnp.float32)
    cum_BxW = jnp.cumsum(gaps_BxW, axis=1) - gaps_BxW  # value of coordinate c at c + T
    v_BxT = jnp.take_along_axis(cum_BxW, jnp.clip(pos_BxTx3[..., axis] + T, 0, 2 * T - 1),
                                axis=1)
    out.append(v_BxT - cum_BxW[:, T:T + 1])
  return jnp.stack(out + [pos_BxTx3[..., 2].astype(jnp.float32)], axis=-1)
