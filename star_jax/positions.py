"""Token positions fed to RoPE: the sequence index, or (line, column) for text laid out in lines.

``ModelConfig.rope_positions`` picks the scheme:

* ``"sequence"``: a token's index in its segment (every pre-trained checkpoint).
* ``"line_column"``: the pair (line, column), lines ending after any token in
  ``ModelConfig.line_break_ids``. Half the rotary frequencies turn with the line,
  half with the column. Text whose steps copy and shift the line above (the
  arithmetic scratchpad) then needs the same relative offsets whatever its
  length, which is what lets a model trained on short problems extend to
  longer ones.

The trainer and the sampler compute positions from the tokens with the
functions here, so both see exactly the same positions.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

SCHEMES = ("sequence", "line_column")


def line_column(tokens_BxT: jax.Array, start_BxT: jax.Array,
                break_ids: Sequence[int]) -> jax.Array:
  """``[B, T, 2]`` (line, column) of every token.

  A line-break token opens the next line at column 0; the tokens after it take
  columns 1, 2, ... (the first line, which no break opens, also starts at 1).
  The break token is where the model predicts the first token of the new line,
  so copying the line above is always one line up and one column right, however
  long the lines. Counting restarts at every token where ``start_BxT`` is true (a
  packed segment's first token, a left-padded prompt's first real token); tokens
  before the first start get positions too, which callers mask out.
  """
  T = tokens_BxT.shape[1]
  idx_T = jnp.arange(T, dtype=jnp.int32)
  brk_BxT = jnp.isin(tokens_BxT, jnp.asarray(tuple(break_ids), jnp.int32)).astype(jnp.int32)
  last_start_BxT = jax.lax.cummax(jnp.where(start_BxT.astype(bool), idx_T, 0), axis=1)
  last_brk_BxT = jax.lax.cummax(jnp.where(brk_BxT > 0, idx_T, -1), axis=1)  # at or before t
  column_BxT = idx_T - jnp.maximum(last_brk_BxT, last_start_BxT - 1)
  breaks_BxT = jnp.cumsum(brk_BxT, axis=1, dtype=jnp.int32)  # at or before t
  before_start_BxT = jnp.take_along_axis(breaks_BxT - brk_BxT, last_start_BxT, axis=1)
  return jnp.stack([breaks_BxT - before_start_BxT, column_BxT], axis=-1)


def advance(position_Bx2: jax.Array, token_B: jax.Array, break_ids: Sequence[int]) -> jax.Array:
  """The (line, column) of ``token_B``, coming right after a token at ``position_Bx2``."""
  brk_B = jnp.isin(token_B, jnp.asarray(tuple(break_ids), jnp.int32))
  line_B, column_B = position_Bx2[:, 0], position_Bx2[:, 1]
  return jnp.stack([line_B + brk_B, jnp.where(brk_B, 0, column_B + 1)], axis=-1)


def segment_starts(segment_ids_BxT: jax.Array) -> jax.Array:
  """True at the first token of every packed segment."""
  prev_BxT = jnp.pad(segment_ids_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  return segment_ids_BxT != prev_BxT


def break_ids_of(tokenizer, vocab_size: int | None = None) -> tuple[int, ...]:
  """Ids whose text contains a newline: the tokens that end a line."""
  n = tokenizer.vocab_size if vocab_size is None else min(vocab_size, tokenizer.vocab_size)
  return tuple(i for i in range(n) if "\n" in tokenizer.decode([i]))
