"""(line, column) positions for text laid out in lines: a `PositionScheme` for the engine.

A token's position is the pair (line, column), lines ending after any of
``break_ids``; half the rotary frequencies turn with the line, half with the
column. Text whose steps copy and shift the line above (the arithmetic
scratchpad) then needs the same relative offsets whatever its length.
``right_aligned`` counts columns from the end of the line above; ``both_columns``
adds the column counted from the line's start as a third coordinate of the
rotary angles (a step that copies the digits at the start of the line above and
one that reads its end then both see fixed offsets, whatever the lengths);
``jitter`` spaces lines and columns by random gaps in training. The arithmetic
task offers it (``task_options.positions="line_column"``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LineColumnPositions:
  """(line, column, index in line[, column from the line's start]) positions; rotary angles
  from the line and the column (and, with ``both_columns``, the column from the start)."""

  break_ids: tuple[int, ...]  # tokens that end a line
  right_aligned: bool = False
  # In training, consecutive lines and columns are jitter or jitter + 1 apart (random per
  # row); in sampling jitter + 0.5. 0: exactly 1 apart.
  jitter: int = 0
  both_columns: bool = False

  def __post_init__(self):
    if not self.break_ids:
      raise ValueError("line_column positions need break_ids (the tokens that end a line)")
    if self.jitter < 0:
      raise ValueError(f"position jitter must be >= 0, got {self.jitter}")
    if self.both_columns and not self.right_aligned:
      raise ValueError("both_columns adds the column from the line's start to the right-aligned "
                       "one: it needs right_aligned (alone, the start column is the plain one)")
    object.__setattr__(self, "break_ids", tuple(int(i) for i in self.break_ids))

  @property
  def coords(self) -> int:
    return 4 if self.both_columns else 3

  @property
  def random(self) -> bool:
    """Whether training draws positions (the jitter's gaps) from the step's key."""
    return self.jitter > 0

  def of_tokens(self, tokens_BxT, starts_BxT, key=None) -> jax.Array:
    """Positions of whole texts (the trainer's, with the step's ``key``; the prefill's)."""
    pos_BxTx3 = line_column(tokens_BxT, starts_BxT, self.break_ids, self.right_aligned)
    if self.both_columns:  # the index in the line is the column from its start
      pos_BxTx3 = jnp.concatenate([pos_BxTx3, pos_BxTx3[..., 2:]], axis=-1)
    return jitter(pos_BxTx3, self.jitter, key)

  def advance(self, position_BxC, token_B) -> jax.Array:
    """The sampler's position of ``token_B``, fed right after the token at ``position_BxC``."""
    step = self.jitter + 0.5 if self.jitter else 1
    new_Bx3 = advance(position_BxC[:, :3], token_B, self.break_ids, self.right_aligned, step)
    if not self.both_columns:
      return new_Bx3
    brk_B = new_Bx3[:, 2] == 0
    start_column_B = jnp.where(brk_B, 0, position_BxC[:, 3] + step)
    return jnp.concatenate([new_Bx3, start_column_B[:, None].astype(new_Bx3.dtype)], axis=-1)

  def rotary_angles(self, positions_BxTx3, rope_dim: int, base: float) -> jax.Array:
    """The rotary pairs split into groups, each its own geometric ladder from 1 rad per step:
    the column and the line (halves), or with ``both_columns`` the column, the column from
    the line's start and the line (thirds, the line taking any remainder)."""
    if rope_dim % 4:
      raise ValueError(f"line_column positions split the rotary dims in groups of pairs: "
                       f"rotary_dim {rope_dim} must be a multiple of 4")
    pairs = rope_dim // 2
    groups = (1, 0) if not self.both_columns else (1, 3, 0)
    sizes = [pairs // len(groups)] * len(groups)  # column(s), then line: the line takes
    sizes[-1] += pairs - sum(sizes)  # any remainder
    inv_freq_R = jnp.concatenate([base ** (-jnp.arange(n, dtype=jnp.float32) / n)
                                  for n in sizes])
    coord_R = jnp.asarray([c for c, n in zip(groups, sizes) for _ in range(n)])
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
  axes = (0, 1) + tuple(range(3, pos_BxTx3.shape[-1]))  # every coordinate but the index
  if key is None:
    scale_C = jnp.asarray([mean if c in axes else 1.0 for c in range(pos_BxTx3.shape[-1])])
    return pos_BxTx3.astype(jnp.float32) * scale_C
  B, T = pos_BxTx3.shape[:2]
  out = []
  for axis, k in zip(axes, jax.random.split(key, len(axes))):
    gaps_BxW = jax.random.randint(k, (B, 2 * T), gap, gap + 2).astype(jnp.float32)
    cum_BxW = jnp.cumsum(gaps_BxW, axis=1) - gaps_BxW  # value of coordinate c at c + T
    v_BxT = jnp.take_along_axis(cum_BxW, jnp.clip(pos_BxTx3[..., axis] + T, 0, 2 * T - 1),
                                axis=1)
    out.append(v_BxT - cum_BxW[:, T:T + 1])
  index_BxT = pos_BxTx3[..., 2].astype(jnp.float32)
  return jnp.stack(out[:2] + [index_BxT] + out[2:], axis=-1)
