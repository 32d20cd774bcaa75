"""The arithmetic of a policy-gradient step: rewards in, advantages and a train batch out.

One step samples G completions for each of Q questions (a group per question) and scores
each with the task's own 0/1 check (``keep.rewards``). Its advantages (``rl.advantage``):

  grpo       (r - mean of the group) / (std of the group + 1e-4), the std unbiased as TRL's
             ``nanstd`` computes it (DeepSeekMath's group normalisation)
  dr_grpo    r - mean of the group: no std (Dr. GRPO, arXiv 2503.20783)
  reinforce  +1 for a right sample, -1 for a wrong one, no baseline (the Reinforce of
             Xiong et al. 2025, arXiv 2504.11343)

A group whose samples are all right or all wrong has zero advantage under grpo and dr_grpo;
with ``rl.drop_uniform_groups`` (Reinforce-Rej) such groups leave the batch altogether.
``policy_batch`` lays the rest out as the trainer's ``[M, B, L]`` rows (prompt then completion,
exactly the sampled token ids, the loss mask on the completion, each token its sequence's
advantage): one sequence a row, or with ``pack`` several a row as segments (``rl.pack_rows``;
segment ids keep them apart and positions restart, so the loss is the same) in the layout of
the fewest token slots (``packed_layout``): a step's samples run from ~40 to ~200 tokens, and
one a row pads every row to the longest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from star_jax.engine.batching import TrainExample, first_fit, lay_out

ADVANTAGES = ("grpo", "dr_grpo", "reinforce")
# How each advantage's loss is normalised (losses.PolicyGradient.normalize).
NORMALIZE = {"grpo": "sequence", "dr_grpo": "constant", "reinforce": "token"}
STD_EPS = 1e-4  # TRL's
ROW_BUCKET = 32  # rows are padded to a multiple of this many tokens (few compiled shapes)


def advantages(rewards_QxG: np.ndarray, kind: str) -> np.ndarray:
  """Each sample's advantage from its group's rewards (``ADVANTAGES``)."""
  r = np.asarray(rewards_QxG, np.float64)
  if r.ndim != 2:
    raise ValueError(f"rewards must be [questions, group], got shape {r.shape}")
  if kind == "reinforce":
    return (2.0 * r - 1.0).astype(np.float32)
  if kind not in ADVANTAGES:
    raise ValueError(f"advantage must be one of {ADVANTAGES}, got {kind!r}")
  centred = r - r.mean(axis=1, keepdims=True)
  if kind == "dr_grpo":
    return centred.astype(np.float32)
  G = r.shape[1]
  std = r.std(axis=1, ddof=1, keepdims=True) if G > 1 else np.zeros_like(r[:, :1])
  return (centred / (std + STD_EPS)).astype(np.float32)


def uniform_groups(rewards_QxG: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(all right, all wrong): per group, whether every sample is right, or every one wrong."""
  r = np.asarray(rewards_QxG) > 0
  return r.all(axis=1), (~r).all(axis=1)


def trained_groups(rewards_QxG: np.ndarray, drop_uniform: bool) -> list[int]:
  """The groups a step trains on: all of them, or with ``drop_uniform`` (Reinforce-Rej) those
  whose samples are neither all right nor all wrong."""
  all_right, all_wrong = uniform_groups(rewards_QxG)
  return [q for q in range(len(all_right)) if not (drop_uniform and (all_right[q] or all_wrong[q]))]


def group_advantages(rewards: Sequence[np.ndarray], kind: str, drop_uniform: bool = False
                     ) -> list[tuple[int, np.ndarray]]:
  """(group, its samples' advantages) of the groups a step trains on, for groups of any size
  (GRPO with the hint adds a group's right hinted samples to it): each group's advantages as
  ``advantages`` computes them for it alone; with ``drop_uniform`` the groups all right or
  all wrong are left out."""
  out = []
  for q, r in enumerate(rewards):
    r = np.asarray(r, np.float32)
    if drop_uniform and ((r > 0).all() or (r <= 0).all()):
      continue
    out.append((q, advantages(r[None], kind)[0]))
  return out


def bucketed(length: int, max_len: int) -> int:
  """A row length holding ``length`` tokens: rounded up to ``ROW_BUCKET``, at most ``max_len``."""
  return min(-(-length // ROW_BUCKET) * ROW_BUCKET, max_len)


def packed_layout(lengths: Sequence[int], rows: int, max_len: int, divisor: int = 1
                  ) -> tuple[int, int, list[list[int]]]:
  """(rows a micro-batch R, row length L, each row's sequences) packing ``lengths`` into the
  fewest token slots M x R x L, where R is ``rows``, ``rows`` / 2 or ``rows`` / 4 (a multiple
  of ``divisor``, the mesh's batch shards), L a power of two (at least ``ROW_BUCKET``, or
  ``max_len``; every length at most ``max_len``) and M, the micro-batches, a power of two
  (the rows past the sequences are padding): a few compiled shapes however the sampled
  lengths vary, so a long run stops compiling early. Ties go to more rows of fewer tokens."""
  counts = [r for r in (rows, rows // 2, rows // 4) if r >= divisor and r % divisor == 0]
  counts = sorted(set(counts or [rows]), reverse=True)
  first = power_of_two(bucketed(max(lengths), max_len))
  widths = sorted({min(L, max_len) for L in (first << k for k in range(16))
                   if L < 2 * max_len})
  best = None
  for L in widths:
    layout = first_fit(lengths, L, decreasing=True)
    for R in counts:
      slots = power_of_two(-(-len(layout) // R)) * R * L
      if best is None or slots < best[0]:
        best = (slots, R, L, layout)
  _, R, L, layout = best
  return R, L, layout


def power_of_two(n: int) -> int:
  """The least power of two >= ``n`` (>= 1)."""
  return 1 << max(0, int(n) - 1).bit_length()


def policy_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                 advantages_R: Sequence[float], rows: int, max_len: int, pack: bool = False,
                 divisor: int = 1) -> dict[str, np.ndarray]:
  """``[M, B, L]`` arrays (``advantages`` too: each token its sequence's) of the sequences.
  One a row: B = ``rows``, M the fewest micro-batches that hold them, L the longest row
  rounded up to ``ROW_BUCKET`` (at most ``max_len``). With ``pack``: several a row as
  segments, B and L from ``packed_layout``. Padding carries no loss."""
  n = len(completions)
  if not (len(prompts) == n == len(advantages_R)) or n == 0:
    raise ValueError(f"need as many prompts, completions and advantages (>= 1), got "
                     f"{len(prompts)}, {n}, {len(advantages_R)}")
  for r, c in enumerate(completions):
    if not c:
      raise ValueError(f"sample {r} has an empty completion")
  lengths = [len(p) + len(c) - 1 for p, c in zip(prompts, completions)]
  if max(lengths) > max_len:
    raise ValueError(f"a sampled sequence of {max(lengths) + 1} tokens exceeds "
                     f"max_len={max_len}")
  if pack:
    rows, L, layout = packed_layout(lengths, rows, max_len, divisor)
    M = power_of_two(-(-len(layout) // rows))
  else:
    L, layout = bucketed(max(lengths), max_len), [[i] for i in range(n)]
    M = -(-len(layout) // rows)
  layout = list(layout) + [[]] * (M * rows - len(layout))  # padding rows
  out = lay_out([TrainExample(p, c) for p, c in zip(prompts, completions)], layout, L,
                values=advantages_R)
  out["advantages"] = out.pop("values")
  return {name: arr.reshape(M, rows, L) for name, arr in out.items()}
