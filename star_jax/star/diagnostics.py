"""RL-STaR's quantities, measured on the eval generations of tasks that know their true steps.

RL-STaR (Chang et al. 2024, arXiv 2410.23912) models a rationale as a chain of N
steps with M choices each; the policy takes the right next step with chance
alpha = (1 + (M - 1) delta) / M, and the final answer is right with chance

    J_N = 1/M + (1 - 1/M) * delta^N.

STaR lifts delta towards 1 when delta > 0 at every step; delta = 0 is a fixed
point. Here alpha is measured as the chance that a step is right given that
every step before it was (the maximum-likelihood per-step rate of the eval
generations: right steps before the first wrong one, over the steps attempted
under a right prefix), delta follows from alpha and the task's ``step_choices``
M, and J_N is predicted per difficulty with N the true number of steps, next to
the measured accuracy.
"""

from __future__ import annotations

import collections

from star_jax.experiment.report import bucket_key
from star_jax.tasks import Example, Task


def step_fields(task: Task, text: str, ex: Example) -> dict:
  """An eval record's step fields: share of right steps, the right prefix, the true length.

  Empty for tasks that do not know their true steps.
  """
  steps = task.step_correct(text, ex)
  gold = task.gold_rationale(ex)
  if steps is None or gold is None:
    return {}
  true_steps = len(task.step_correct(gold, ex))
  prefix = next((i for i, ok in enumerate(steps) if not ok), len(steps))
  return {"step_accuracy": sum(steps) / max(len(steps), 1),
          "prefix_steps": min(prefix, true_steps), "true_steps": true_steps}


def _estimate(rows: list[dict], choices: int) -> dict:
  right = sum(r["prefix_steps"] for r in rows)
  attempted = sum(min(r["prefix_steps"] + 1, r["true_steps"]) for r in rows)
  alpha = right / max(attempted, 1)
  delta = min(max((choices * alpha - 1) / (choices - 1), 0.0), 1.0)
  steps = collections.Counter(r["true_steps"] for r in rows).most_common(1)[0][0]
  return {"step_accuracy": alpha, "delta": delta, "steps": steps,
          "predicted_accuracy": 1 / choices + (1 - 1 / choices) * delta ** steps,
          "accuracy": sum(r["correct"] for r in rows) / len(rows)}


def rl_star(task: Task, records: list[dict]) -> dict[str, dict]:
  """Per difficulty bucket (and "all"): alpha, delta, N, predicted and measured accuracy.

  Empty when the task has no step checks (``step_choices`` is None) or no record has steps.
  """
  choices = task.step_choices
  rows = [r for r in records if "prefix_steps" in r]
  if choices is None or not rows:
    return {}
  by: dict[str, list[dict]] = collections.defaultdict(list)
  for r in rows:
    if r.get("difficulty") is not None:
      by[str(r["difficulty"])].append(r)
  out = {b: _estimate(by[b], choices) for b in sorted(by, key=bucket_key)}
  all_rows = _estimate(rows, choices)
  del all_rows["steps"], all_rows["predicted_accuracy"]  # lengths differ: no one N
  out["all"] = all_rows
  return out
