"""Which samples STaR keeps, and what the kept set says about the iteration.

A sample is kept when the task reads the gold answer out of it; duplicates of
one question's rationale count once. Kept records never carry the hint: the
rationale is split out of the generated text by the task, which strips hint
markers.
"""

from __future__ import annotations

import numpy as np

from star_jax.star.report import bucket_key
from star_jax.star.rollout import Generation
from star_jax.tasks import Example, Task


def unique_rationales(task: Task, g: Generation, limit: int) -> list[str]:
  """The distinct rationales of ``g``'s correct samples, at most ``limit`` (at least 1)."""
  out = []
  for text, ok in zip(g.texts, g.correct):
    if ok:
      r = task.split_rationale(text)
      if r not in out:
        out.append(r)
  return out[:max(limit, 1)]


def kept_record(ex: Example, rationale: str, source: str) -> dict:
  """One line of ``iter_NNN/kept.jsonl``; ``source`` is generation or rationalization."""
  return {"id": ex.id, "question": ex.question, "rationale": rationale, "answer": ex.answer,
          "source": source}


def keep(task: Task, gens: list[Generation], source: str, limit: int
         ) -> tuple[list[dict], set[str], list[Example]]:
  """Kept records, the ids of the questions solved, and the questions that failed."""
  kept, solved, failed = [], set(), []
  for g in gens:
    rationales = unique_rationales(task, g, limit)
    kept += [kept_record(g.example, r, source) for r in rationales]
    if rationales:
      solved.add(g.example.id)
    else:
      failed.append(g.example)
  return kept, solved, failed


def solved_by_difficulty(task: Task, questions: list[Example], solved: set,
                         rationalized: set) -> dict:
  """Per difficulty bucket: questions asked, solved by generation, solved by rationalization."""
  out: dict[str, dict[str, int]] = {}
  for ex in questions:
    d = task.difficulty(ex)
    if d is None:
      continue
    row = out.setdefault(str(d), {"questions": 0, "generation": 0, "rationalization": 0})
    row["questions"] += 1
    row["generation"] += ex.id in solved
    row["rationalization"] += ex.id in rationalized
  return dict(sorted(out.items(), key=lambda kv: bucket_key(kv[0])))


def wrong_step_share(task: Task, by_id: dict[str, Example], kept: list[dict]) -> float | None:
  """Share of kept rationales that reach the gold answer through a wrong step (tasks that
  know their true steps, e.g. arithmetic); None for tasks that do not."""
  if not kept:
    return None
  steps = [task.step_correct(k["rationale"], by_id[k["id"]]) for k in kept]
  if any(s is None for s in steps):
    return None
  return float(np.mean([not all(s) for s in steps]))
