"""What sampling returns: every prompt's samples (``SampleOutput``), a batch's rows on the host
while it decodes (``BatchRows``), and where a stop string cuts a row."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from star_jax.runtime.distributed import to_host
from star_jax.sampling.decode import DecodeState


@dataclasses.dataclass
class SampleOutput:
  """Per prompt and sample: ``tokens[p, i, :lengths[p, i]]`` (end token included)."""
  tokens: np.ndarray  # [num_prompts, n, max_new_tokens] int32, zero past the length
  lengths: np.ndarray  # [num_prompts, n]
  logprobs: np.ndarray  # [num_prompts, n, max_new_tokens] log-prob of each token at the
  # temperature it was drawn at (greedy: the model's own)
  finished: np.ndarray  # [num_prompts, n] bool: stopped on an end token or stop string
  decode_steps: int  # decode-loop iterations run over all batches (after prefill)
  decode_row_steps: int  # rows x iterations computed (a compacted batch computes fewer rows)
  prefill_tokens: int  # token slots prefilled, padding included (the shared prefix once)

  def sequences(self, prompt: int, sample: int = 0) -> list[int]:
    return self.tokens[prompt, sample, : self.lengths[prompt, sample]].tolist()


class BatchRows(NamedTuple):
  """A batch's outputs on the host, per row of the batch as it was first laid out."""
  tokens: np.ndarray
  logprobs: np.ndarray
  lengths: np.ndarray
  done: np.ndarray
  stop_len: np.ndarray  # length cut at a stop string, -1: none

  def put(self, state: DecodeState, where: np.ndarray, done: np.ndarray | None = None,
          tokens: np.ndarray | None = None, lengths: np.ndarray | None = None) -> None:
    """Copies the state's rows into their places (``where``; -1: a filler row, skipped);
    ``done``, ``tokens`` and ``lengths`` are the host copies the caller already holds."""
    host = lambda given, x: to_host(x) if given is None else given
    keep = where >= 0
    dst = where[keep]
    self.tokens[dst] = host(tokens, state.tokens_BxN)[keep]
    self.logprobs[dst] = to_host(state.logprobs_BxN)[keep]
    self.lengths[dst] = host(lengths, state.lengths_B)[keep]
    self.done[dst] = host(done, state.done_B)[keep]

  def write(self, out: SampleOutput, places: list[tuple[int, int]], limit_R: np.ndarray
            ) -> None:
    """Row r's output as sample ``places[r]`` (prompt, sample) of ``out``: cut at its stop
    string, and at its limit ``limit_R[r]`` (a row cut there is not finished)."""
    for r, (i, j) in enumerate(places):
      length = int(self.stop_len[r]) if self.stop_len[r] >= 0 else int(self.lengths[r])
      finished = (bool(self.done[r]) or self.stop_len[r] >= 0) and length <= limit_R[r]
      length = min(length, int(limit_R[r]))
      out.tokens[i, j, :length] = self.tokens[r, :length]
      out.logprobs[i, j, :length] = self.logprobs[r, :length]
      out.lengths[i, j] = length
      out.finished[i, j] = finished


def stop_cut(tokens: list[int], stop_strings, decode_fn) -> int | None:
  """Smallest prefix length whose text contains a stop string, or None."""
  if not any(s in decode_fn(tokens) for s in stop_strings):
    return None
  lo, hi = 1, len(tokens)  # binary search: text containment is monotone in the prefix
  while lo < hi:
    mid = (lo + hi) // 2
    if any(s in decode_fn(tokens[:mid]) for s in stop_strings):
      hi = mid
    else:
      lo = mid + 1
  return lo
