"""Turning (prompt, completion) token lists into training batches.

Each example becomes one *segment*: inputs ``tokens[:-1]``, targets
``tokens[1:]``, and a loss mask that is 1 only where the target is a completion
token (rationale + answer), never the prompt. Segments are packed into rows
(``pack=True``) or placed one per row; segment ids keep packed examples from
attending to each other and positions restart at 0 in every segment.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TrainExample:
  prompt: Sequence[int]  # not trained on (few-shot prompt, question)
  completion: Sequence[int]  # trained on (rationale, answer, end token)


def batch_arrays(rows: int, seq_len: int) -> dict[str, np.ndarray]:
  return {
      "tokens": np.zeros((rows, seq_len), np.int32),
      "targets": np.zeros((rows, seq_len), np.int32),
      "loss_mask": np.zeros((rows, seq_len), np.float32),
      "segment_ids": np.zeros((rows, seq_len), np.int32),
      "positions": np.zeros((rows, seq_len), np.int32),
  }


@dataclasses.dataclass
class Packed:
  batch: dict[str, np.ndarray]  # [rows, seq_len] arrays
  num_examples: int
  num_too_long: int  # examples longer than seq_len, skipped (counted, not silently dropped)


def first_fit(lengths: Sequence[int], capacity: int, decreasing: bool = False
              ) -> list[list[int]]:
  """Rows of at most ``capacity`` tokens holding every item (indices into ``lengths``), each
  in the first row with room: in index order (rows keep the examples' order), or longest
  first (``decreasing``: fewer rows); each row's items in index order."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if decreasing else \
      range(len(lengths))
  rows: list[list[int]] = []
  room: list[int] = []
  for i in order:
    r = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
    if r is None:
      rows.append([])
      room.append(capacity)
      r = len(rows) - 1
    rows[r].append(i)
    room[r] -= lengths[i]
  return [sorted(r) for r in rows]


def lay_out(examples: Sequence[TrainExample], rows: Sequence[Sequence[int]], seq_len: int,
            values: Sequence[float] | None = None) -> dict[str, np.ndarray]:
  """``[len(rows), seq_len]`` arrays with ``rows[r]``'s examples (indices) as row r's
  segments in order; with ``values``, also ``values``: each token its example's value."""
  batch = batch_arrays(len(rows), seq_len)
  if values is not None:
    batch["values"] = np.zeros((len(rows), seq_len), np.float32)
  for r, members in enumerate(rows):
    offset = 0
    for seg_id, i in enumerate(members, start=1):
      ex = examples[i]
      seq = np.asarray(list(ex.prompt) + list(ex.completion), np.int32)
      k = len(seq) - 1
      sl = slice(offset, offset + k)
      batch["tokens"][r, sl], batch["targets"][r, sl] = seq[:-1], seq[1:]
      batch["loss_mask"][r, offset + len(ex.prompt) - 1:offset + k] = 1.0  # completion targets
      batch["segment_ids"][r, sl] = seg_id
      batch["positions"][r, sl] = np.arange(k)
      if values is not None:
        batch["values"][r, sl] = values[i]
      offset += k
  return batch


def row_tokens(ex: TrainExample) -> int:
  """Tokens ``ex`` takes in a row: prompt + completion, less the one token the shift drops."""
  return len(ex.prompt) + len(ex.completion) - 1


def pack(examples: Sequence[TrainExample], seq_len: int, pack_rows: bool = True) -> Packed:
  """Lays examples into rows of ``seq_len``; too-long examples are skipped and counted."""
  kept, too_long = [], 0
  for ex in examples:
    if not ex.completion:
      raise ValueError("a training example has an empty completion: nothing to learn from")
    if row_tokens(ex) > seq_len:
      too_long += 1
      continue
    kept.append(ex)
  lengths = [row_tokens(ex) for ex in kept]
  rows = first_fit(lengths, seq_len) if pack_rows else [[i] for i in range(len(kept))]
  return Packed(lay_out(kept, rows, seq_len), len(kept), too_long)


def iterate_batches(rows: dict[str, np.ndarray], batch_size: int, num_steps: int,
                    seed: int, grad_accum: int = 1, start_step: int = 0
                    ) -> Iterator[dict[str, np.ndarray]]:
  """``num_steps`` batches of ``grad_accum x batch_size`` rows, epoch after shuffled epoch.

  Deterministic in (seed, step): resuming at ``start_step`` yields the same
  batches an uninterrupted run would. Rows that do not fill the last batch of an
  epoch are topped up with all-padding rows (loss mask 0), never dropped.
  """
  n = len(rows["tokens"])
  if n == 0:
    raise ValueError("no training rows to iterate over")
  per_step = batch_size * grad_accum
  steps_per_epoch = -(-n // per_step)
  for step in range(start_step, num_steps):
    epoch, k = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    idx = order[k * per_step:(k + 1) * per_step]
    out = {}
    for name, arr in rows.items():
      part = arr[idx]
      if len(idx) < per_step:
        part = np.concatenate([part, np.zeros((per_step - len(idx),) + arr.shape[1:], arr.dtype)])
      out[name] = part.reshape((grad_accum, batch_size) + arr.shape[1:])
    yield out


def count_sequences(batch: dict[str, np.ndarray]) -> int:
  """The sequences a batch trains on: its rows' segments that carry a loss token (a packed
  row holds several)."""
  seg = np.asarray(batch["segment_ids"]).reshape(-1, np.shape(batch["segment_ids"])[-1])
  mask = np.asarray(batch["loss_mask"]).reshape(seg.shape) > 0
  width = int(seg.max(initial=0)) + 1
  ids = (np.arange(seg.shape[0])[:, None] * width + seg)[mask]
  return int(len(np.unique(ids)))
