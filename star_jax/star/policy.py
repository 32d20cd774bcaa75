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
``policy_batch`` lays the rest out as the trainer's ``[M, B, L]`` rows: one sampled sequence a
row (prompt then completion, exactly the sampled token ids), the loss mask on the completion.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from star_jax.engine.batching import batch_arrays

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


def policy_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                 advantages_R: Sequence[float], rows: int, max_len: int) -> dict[str, np.ndarray]:
  """``[M, rows, L]`` arrays (and ``advantages`` ``[M, rows]``) of one sequence a row; M is
  the fewest micro-batches of ``rows`` that hold them, L the longest row rounded up to
  ``ROW_BUCKET`` (at most ``max_len``); padding rows have no loss."""
  n = len(completions)
  if not (len(prompts) == n == len(advantages_R)) or n == 0:
    raise ValueError(f"need as many prompts, completions and advantages (>= 1), got "
                     f"{len(prompts)}, {n}, {len(advantages_R)}")
  longest = max(len(p) + len(c) - 1 for p, c in zip(prompts, completions))
  if longest > max_len:
    raise ValueError(f"a sampled sequence of {longest + 1} tokens exceeds max_len={max_len}")
  L = min(-(-longest // ROW_BUCKET) * ROW_BUCKET, max_len)
  M = -(-n // rows)
  out = batch_arrays(M * rows, L)
  adv = np.zeros(M * rows, np.float32)
  for r, (p, c, a) in enumerate(zip(prompts, completions, advantages_R)):
    if not c:
      raise ValueError(f"sample {r} has an empty completion")
    seq = np.asarray(list(p) + list(c), np.int32)
    k = len(seq) - 1
    out["tokens"][r, :k], out["targets"][r, :k] = seq[:-1], seq[1:]
    out["loss_mask"][r, len(p) - 1:k] = 1.0  # the targets that are completion tokens
    out["segment_ids"][r, :k] = 1
    out["positions"][r, :k] = np.arange(k)
    adv[r] = a
  batch = {name: arr.reshape(M, rows, L) for name, arr in out.items()}
  batch["advantages"] = adv.reshape(M, rows)
  return batch
