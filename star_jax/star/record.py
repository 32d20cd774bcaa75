"""An iteration's line in ``metrics.jsonl``, built in one place from the typed results:
what was sampled and kept (``IterationResult``), how training went, and the evaluation.

Keys (present where they apply):
  iteration, method (all but star), train_questions, kept_by_<difficulty>,
  solved_by_generation, solved_by_rationalization, kept, distinct_paths_per_question,
  train_examples (controls), train_steps, train_loss, train_first_loss, train_tokens (loss
  tokens trained on), train_sequences (sequences trained on: a packed row holds several),
  train_sequences_per_step, train_tokens_per_step, iteration_seconds (sampling to evaluation,
  wall),
  train_examples_too_long, prompts_skipped_too_long, train_pass_at_1, kept_wrong_step_share,
  kept_wrong_step_share_by_source, unsupported_by_source, sample_seconds,
  rationalize_seconds, train_seconds, tokens_sampled (what the iteration's sampling took:
  generation and rationalization, or every policy step's; B-STaR's probe not counted), bstar_* (B-STaR's probe: methods.py), rl_* (the
  policy-gradient methods' block summary: grpo.py); iteration 0:
  pretrain_examples, pretrain_steps,
  pretrain_loss, pretrain_seconds; every iteration: eval_accuracy, eval_n, eval_seconds,
  eval_skipped_too_long, eval_step_accuracy, accuracy_by_<difficulty>, eval_label_shares,
  eval_choice_loglik_accuracy, rl_star_by_<difficulty>; with eval.samples = k:
  eval_samples, eval_temperature, eval_pass_at (pass@j, j = 1, 2, 4, .., k),
  eval_majority_accuracy, pass_at_k_by_<difficulty>, majority_accuracy_by_<difficulty>; with
  a verifier (verifier.enabled, verifier.py): verifier_* (its training and held-out pairwise
  accuracy), eval_verifier_best_of_k, eval_verifier_best_of and eval_majority_at (j = 1, 2,
  4, .., k), verifier_best_of_k_by_<difficulty>; every iteration, added by the loop:
  process_* (the process's memory, open files, threads and compiled programs when the line
  was made: runtime/resources.py; they differ between two runs of one config).
"""

from __future__ import annotations

import numpy as np

from star_jax.star import diagnostics, keep as keep_lib, rollout
from star_jax.star.iteration import IterationResult
from star_jax.tasks import Task


def iteration_record(n: int, task: Task, result: IterationResult | None,
                     evaluation: rollout.EvalResult, base_fields: dict | None = None) -> dict:
  """Iteration ``n``'s record: ``result``'s fields (None for M_0, which has ``base_fields``
  instead: its warm start's) and the evaluation's."""
  record = {"iteration": n}
  if result is not None:
    record.update(star_fields(task, result) if result.generation is not None
                  else control_fields(result))
  record.update(base_fields or {})
  record.update(eval_fields(task, evaluation))
  return record


def star_fields(task: Task, r: IterationResult) -> dict:
  gen = r.generation or keep_lib.Kept([], set(), [], 0)
  rat = r.rationalization or keep_lib.Kept([], set(), [], 0)
  by_id = {ex.id: ex for ex in r.questions}
  stats = r.train
  method = {} if r.method == "star" else {"method": r.method}
  return {
      **method, "train_questions": len(r.questions),
      f"kept_by_{task.difficulty_name}": keep_lib.solved_by_difficulty(task, r.questions,
                                                                       gen.solved, rat.solved),
      "solved_by_generation": len(gen.solved), "solved_by_rationalization": len(rat.solved),
      "kept": len(r.kept),
      # distinct reasoning paths (Task.path_key) the keep rule selects, per question sampled
      "distinct_paths_per_question": float(np.mean(gen.paths)) if len(gen.paths) else 0.0,
      "train_steps": stats.steps if stats else 0,
      "train_loss": stats.final_loss if stats else None,
      "train_first_loss": _finite(stats.first_loss) if stats else None,
      "train_tokens": stats.tokens if stats else 0,
      **per_step(stats),
      "train_examples_too_long": stats.too_long if stats else 0,
      "prompts_skipped_too_long": r.skipped,
      "train_pass_at_1": sum(sum(g.correct) for g in r.samples)
                         / max(len(r.samples) * r.samples_per_question, 1),
      "kept_wrong_step_share": keep_lib.wrong_step_share(task, by_id, r.kept),
      "kept_wrong_step_share_by_source": keep_lib.wrong_step_share_by_source(task, by_id,
                                                                             r.kept),
      # right answers whose rationale does not reach them (not kept with require_supported)
      "unsupported_by_source": {"generation": gen.unsupported,
                                "rationalization": rat.unsupported},
      "sample_seconds": r.sample_seconds, "rationalize_seconds": r.rationalize_seconds,
      "train_seconds": r.train_seconds, **r.extra,
  }


def per_step(stats) -> dict:
  """What a train step trained on, on average: sequences (a packed row holds several) and
  loss tokens; the budget two methods are compared at (docs/variants.md)."""
  if not stats or not stats.steps:
    return {"train_sequences": 0, "train_sequences_per_step": 0.0, "train_tokens_per_step": 0.0}
  return {"train_sequences": stats.sequences,
          "train_sequences_per_step": stats.sequences / stats.steps,
          "train_tokens_per_step": stats.tokens / stats.steps}


def _finite(x: float) -> float | None:
  return None if x is None or not np.isfinite(x) else float(x)


def control_fields(r: IterationResult) -> dict:
  """A control's fields: the loop's keys, with nothing sampled or kept."""
  stats = r.train
  return {
      "method": r.method, "train_questions": len(r.questions),
      "solved_by_generation": 0, "solved_by_rationalization": 0, "kept": 0,
      "train_examples": stats.examples, "train_steps": stats.steps,
      "train_loss": stats.final_loss, "train_examples_too_long": stats.too_long,
      "train_tokens": stats.tokens, **per_step(stats),
      "sample_seconds": r.sample_seconds, "rationalize_seconds": 0.0,
      "train_seconds": r.train_seconds, **r.extra,
  }


def eval_fields(task: Task, result: rollout.EvalResult) -> dict:
  """The evaluation's fields (RL-STaR's per-step accuracy where the task knows steps)."""
  out = {"eval_accuracy": result.accuracy, "eval_n": result.n, "eval_seconds": result.seconds,
         "eval_skipped_too_long": result.skipped_too_long}
  steps = [r["step_accuracy"] for r in result.records if "step_accuracy" in r]
  if steps:
    out["eval_step_accuracy"] = float(np.mean(steps))
  if result.by_difficulty:
    out[f"accuracy_by_{task.difficulty_name}"] = result.by_difficulty
  shares = rollout.label_shares(task, result.records)
  if shares:
    out["eval_label_shares"] = shares
  if result.choice_loglik is not None:
    out["eval_choice_loglik_accuracy"] = result.choice_loglik
  if result.sampled is not None:
    s = result.sampled
    out.update({"eval_samples": s["samples"], "eval_temperature": s["temperature"],
                "eval_pass_at": s["pass_at"], "eval_majority_accuracy": s["majority_accuracy"]})
    if s["by_difficulty"]:
      name = task.difficulty_name
      out[f"pass_at_k_by_{name}"] = {b: v["pass_at_k"] for b, v in s["by_difficulty"].items()}
      out[f"majority_accuracy_by_{name}"] = {b: v["majority"]
                                             for b, v in s["by_difficulty"].items()}
    if "verifier_best_of" in s:  # V-STaR: best-of-j by the verifier's score, majority@j
      out.update({"eval_verifier_best_of_k": s["verifier_best_of"][str(s["samples"])],
                  "eval_verifier_best_of": s["verifier_best_of"],
                  "eval_majority_at": s["majority_at"]})
      if s["verifier_by_difficulty"]:
        out[f"verifier_best_of_k_by_{task.difficulty_name}"] = s["verifier_by_difficulty"]
  rl_star = diagnostics.rl_star(task, result.records)
  if rl_star:
    out[f"rl_star_by_{task.difficulty_name}"] = rl_star
  return out
