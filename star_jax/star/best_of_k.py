"""V-STaR's test-time pick: of a question's k sampled answers, the answered one a verifier
scores highest (``verifier.score_generations``), against majority vote on the same samples.

Ties go to the first in sample order, and a question none of whose samples gives an answer
counts as wrong, as for majority vote (``rollout.majority_vote``). Best-of-j and majority@j
for j < k are means over the k / j disjoint blocks of j samples (every sample used once).
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from star_jax.experiment.report import bucket_key
from star_jax.star import rollout
from star_jax.tasks import Example, Task


def pick(predictions: Sequence[str | None], scores: Sequence[float]) -> int | None:
  """The answered sample the verifier scores highest (a tie: the first in sample order);
  None when no sample gives an answer."""
  best = None
  for i, (p, s) in enumerate(zip(predictions, scores)):
    if p is not None and (best is None or s > scores[best]):
      best = i
  return best


def blocks(k: int, j: int) -> list[range]:
  """The k samples as k // j disjoint blocks of j in sample order: best-of-j and majority@j
  are means over them (every sample used once, no draw)."""
  return [range(b * j, (b + 1) * j) for b in range(k // j)]


def best_of_k_eval(task: Task, gens: Sequence[rollout.Generation],
                   scores: dict[str, np.ndarray], examples: Sequence[Example], k: int) -> dict:
  """Verifier best-of-j and majority@j for j = 1, 2, 4, .., k (means over ``blocks``), overall
  and best-of-k per difficulty bucket; questions without samples count as wrong."""
  by_id = {g.example.id: g for g in gens}
  js = rollout.ks(k)
  best = {j: [] for j in js}
  major = {j: [] for j in js}
  by_bucket = collections.defaultdict(list)
  for ex in examples:
    g = by_id.get(ex.id)
    for j in js:
      if g is None:
        best[j].append(0.0)
        major[j].append(0.0)
        continue
      hits, votes = [], []
      for block in blocks(k, j):
        i = pick([g.predictions[b] for b in block], [scores[ex.id][b] for b in block])
        hits.append(i is not None and g.correct[block[i]])
        vote = rollout.majority_vote([g.predictions[b] for b in block])
        votes.append(vote is not None and task.is_correct(vote, ex))
      best[j].append(float(np.mean(hits)))
      major[j].append(float(np.mean(votes)))
    d = task.difficulty(ex)
    if d is not None:
      by_bucket[str(d)].append(best[k][-1])
  return {"verifier_best_of": {str(j): float(np.mean(best[j])) for j in js},
          "majority_at": {str(j): float(np.mean(major[j])) for j in js},
          "verifier_by_difficulty": {b: float(np.mean(by_bucket[b]))
                                     for b in sorted(by_bucket, key=bucket_key)}}
