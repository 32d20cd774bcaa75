"""Which samples STaR keeps, and what the kept set says about the iteration.

A sample is kept when the task reads the gold answer out of it and, with
``require_supported``, its rationale itself reaches that answer (arithmetic: the
last scratch line; GSM8K: the rationale's last result), so a hint copied into
the answer line after a wrong rationale is not trained on. Duplicates of one
question's rationale count once: the same text (``distinct="text"``, STaR's), or, for RFT,
the same reasoning path (``"path"``: ``Task.path_key``, e.g. arithmetic's scratch lines
whatever their spacing); ReST-EM keeps every right sample up to its cap (``"sample"``).
Kept records never carry the hint: the task splits the rationale out of the generated text
and strips hint markers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from star_jax.experiment.report import bucket_key
from star_jax.star.rollout import Generation
from star_jax.tasks import Example, Task


DISTINCT = ("sample", "text", "path")


def rewards(task: Task, g: Generation, require_supported: bool = False) -> list[float]:
  """The 0/1 reward of each of ``g``'s samples, by the check STaR keeps with: 1 for a right
  answer (whose own rationale reaches it, with ``require_supported``), else 0."""
  return [float(ok and (not require_supported
                        or task.rationale_supports(task.split_rationale(text), g.example)))
          for text, ok in zip(g.texts, g.correct)]


def selected(task: Task, g: Generation, require_supported: bool = False,
             min_score: float | None = None) -> tuple[list[str], int]:
  """The rationales of ``g``'s correct samples the rule selects, in sample order with
  repeats, and how many correct samples had a rationale that does not itself reach the
  answer (not selected with ``require_supported``). With ``min_score`` (B-STaR's threshold)
  a sample whose score (mean token log-probability) is below it is not selected."""
  out, unsupported = [], 0
  scores = g.scores if min_score is not None and g.scores is not None else [None] * len(g.texts)
  for text, ok, score in zip(g.texts, g.correct, scores):
    if ok and (score is None or score >= min_score):
      r = task.split_rationale(text)
      if not task.rationale_supports(r, g.example):
        unsupported += 1
        if require_supported:
          continue
      out.append(r)
  return out, unsupported


def distinct(task: Task, rationales: list[str], by: str = "text") -> list[str]:
  """The first rationale of each text (``by="text"``) or path (``"path"``), in order; with
  ``"sample"`` every one, repeats included."""
  if by not in DISTINCT:
    raise ValueError(f"distinct must be one of {DISTINCT}, got {by!r}")
  if by == "sample":
    return list(rationales)
  seen, out = set(), []
  for r in rationales:
    key = r if by == "text" else task.path_key(r)
    if key not in seen:
      seen.add(key)
      out.append(r)
  return out


def unique_rationales(task: Task, g: Generation, limit: int, require_supported: bool = False,
                      by: str = "text") -> tuple[list[str], int]:
  """The distinct rationales of ``g``'s correct samples, at most ``limit`` (at least 1), and
  how many correct samples had a rationale that does not itself reach the answer (not kept
  with ``require_supported``)."""
  out, unsupported = selected(task, g, require_supported)
  return distinct(task, out, by)[:max(limit, 1)], unsupported


def balance_score(task: Task, gens: list[Generation], n0: int,
                  require_supported: bool = False, min_score: float | None = None) -> float:
  """B-STaR's balance score: the mean over questions of min(n_correct / n0, 1) * n_correct /
  n_selected (0 where nothing is selected). n_selected: the distinct paths the keep rule
  selects; n_correct: those whose every step is right, for tasks that know their steps
  (``Task.step_correct``), else all of them (the answer is the only check). ``min_score``:
  the candidate threshold (``selected``)."""
  scores = []
  for g in gens:
    paths = distinct(task, selected(task, g, require_supported, min_score)[0], "path")
    steps = [task.step_correct(r, g.example) for r in paths]
    right = sum(s is None or all(s) for s in steps)
    scores.append(min(right / n0, 1.0) * right / len(paths) if paths else 0.0)
  return float(np.mean(scores)) if scores else 0.0


SOURCES = ("generation", "rationalization")


def kept_record(ex: Example, rationale: str, source: str) -> dict:
  """One line of ``iter_NNN/kept.jsonl``; ``source`` is generation or rationalization."""
  return {"id": ex.id, "question": ex.question, "rationale": rationale, "answer": ex.answer,
          "source": source}


class Kept(NamedTuple):
  records: list[dict]  # kept rationales, as written to kept.jsonl
  solved: set[str]  # ids of the questions with a kept rationale
  failed: list[Example]  # the questions without one (rationalization's candidates)
  unsupported: int  # correct answers whose rationale does not reach them
  paths: list[int] | tuple = ()  # per question: distinct paths (Task.path_key) the rule selects


def keep(task: Task, gens: list[Generation], source: str, limit: int,
         require_supported: bool = False, by: str = "text", min_score: float | None = None
         ) -> Kept:
  """What the rule keeps of ``gens``: per question the distinct (``by``) selected rationales,
  at most ``limit`` (``min_score``: see ``selected``)."""
  out = Kept([], set(), [], 0, [])
  unsupported = 0
  for g in gens:
    chosen, bad = selected(task, g, require_supported, min_score)
    out.paths.append(len(distinct(task, chosen, "path")))
    rationales = distinct(task, chosen, by)[:max(limit, 1)]
    unsupported += bad
    out.records.extend(kept_record(g.example, r, source) for r in rationales)
    if rationales:
      out.solved.add(g.example.id)
    else:
      out.failed.append(g.example)
  return out._replace(unsupported=unsupported)


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
  know their true steps, e.g. arithmetic); None for tasks that do not, or nothing kept."""
  if not kept:
    return None
  steps = [task.step_correct(k["rationale"], by_id[k["id"]]) for k in kept]
  if any(s is None for s in steps):
    return None
  return float(np.mean([not all(s) for s in steps]))


def wrong_step_share_by_source(task: Task, by_id: dict[str, Example], kept: list[dict]
                               ) -> dict[str, float | None]:
  return {src: wrong_step_share(task, by_id, [k for k in kept if k["source"] == src])
          for src in SOURCES}
