"""The baselines STaR is compared with, run with the STaR run's budget: the same base model,
iterations, questions, steps and batch size, and the same evaluation after every iteration.

  direct     fine-tuning on the bare answers of every train question (all of D, whatever
             star.questions_per_iteration), no rationale (the paper's "direct fine-tuned"
             baseline; arithmetic: the sum line alone)
  seed_only  more training on the seed set P alone, the data the base model was made from:
             a STaR lift is then more than more steps

``star.method`` picks one ("star" is the loop itself); the iteration records have the loop's
keys, with nothing sampled or kept.
"""

from __future__ import annotations

import time

from star_jax.star import finetune as ft, phases

METHODS = ("star", "direct", "seed_only")


def check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"star.method must be one of {METHODS}, got {method!r}")


def iteration(run: phases.Run, n: int, base, params) -> tuple[dict, list[dict], object]:
  """Control iteration ``n``: trains M_{n-1} (or M_0 with restart_from_base) for STaR's steps."""
  config, task = run.config, run.exp.task
  star = config.star
  questions = []
  if star.method == "direct":
    questions = run.exp.train_set  # all of D: the strongest answers-only baseline of the budget
    examples = ft.training_examples(task, run.exp.tokenizer, [(ex, "") for ex in questions],
                                    few_shot=star.few_shot_in_training)
  else:
    examples = phases.seed_examples(run)
  steps = ft.steps_for_iteration(star, n)
  t0 = time.time()
  new_params, stats = ft.finetune(run.trainer(steps), base if star.restart_from_base else params,
                                  examples, config.train, steps, seed=config.seed * 1000 + n,
                                  desc=f"iter {n} {star.method}", ckpt_dir=run.dir(n, "train_ckpt"),
                                  checkpoint_every=config.checkpoint_every,
                                  async_save=config.checkpoint_async,
                                  on_step=run.on_step(n),
                                  keep_masters=not star.restart_from_base)
  record = {
      "iteration": n, "method": star.method,
      "train_questions": len(questions),
      "solved_by_generation": 0, "solved_by_rationalization": 0, "kept": 0,
      "train_examples": stats.examples, "train_steps": stats.steps,
      "train_loss": stats.final_loss, "train_examples_too_long": stats.too_long,
      "sample_seconds": 0.0, "rationalize_seconds": 0.0, "train_seconds": time.time() - t0,
  }
  return record, [], new_params
