"""What a finished iteration leaves in the workdir, and what it tells the user.

`finish` writes, in this order: the kept rationales and eval completions
(``iter_NNN/*.jsonl``), the model checkpoint, then the iteration's line in
``metrics.jsonl`` — last, because that line marks the iteration done for a
resumed run. Then the phase shards are deleted, the log lines and the plots
are written.
"""

from __future__ import annotations

import logging

import numpy as np
from etils import epath

from star_jax.runtime import failpoints
from star_jax.runtime.files import read_jsonl, write_jsonl
from star_jax.star import diagnostics, plots, report, rollout
from star_jax.star.phases import Run
from star_jax.star.workdir import Shards


def metrics_path(workdir: epath.PathLike) -> epath.Path:
  return epath.Path(workdir) / "metrics.jsonl"


def append_metrics(path: epath.PathLike, record: dict) -> None:
  """Rewrites metrics.jsonl with one more line (atomic: never a partial line)."""
  rows = [r for r in read_jsonl(path) if r.get("iteration") != record["iteration"]]
  write_jsonl(path, sorted(rows + [record], key=lambda r: r["iteration"]))


def eval_fields(run: Run, result: rollout.EvalResult) -> dict:
  """The record's evaluation fields (RL-STaR's per-step accuracy where the task knows steps)."""
  out = {"eval_accuracy": result.accuracy, "eval_n": result.n, "eval_seconds": result.seconds,
         "eval_skipped_too_long": result.skipped_too_long}
  steps = [r["step_accuracy"] for r in result.records if "step_accuracy" in r]
  if steps:
    out["eval_step_accuracy"] = float(np.mean(steps))
  if result.by_difficulty:
    out[f"accuracy_by_{run.exp.task.difficulty_name}"] = result.by_difficulty
  shares = rollout.label_shares(run.exp.task, result.records)
  if shares:
    out["eval_label_shares"] = shares
  if result.choice_loglik is not None:
    out["eval_choice_loglik_accuracy"] = result.choice_loglik
  rl_star = diagnostics.rl_star(run.exp.task, result.records)
  if rl_star:
    out[f"rl_star_by_{run.exp.task.difficulty_name}"] = rl_star
  return out


def finish(run: Run, n: int, record: dict, result: rollout.EvalResult, kept: list[dict],
           params) -> None:
  """Writes iteration ``n``'s artifacts, checkpoint and metrics line, then logs and plots."""
  record.update(eval_fields(run, result))
  if n > 0:
    write_jsonl(run.dir(n, "kept.jsonl"), kept)
  write_jsonl(run.dir(n, "eval.jsonl"), result.records)
  if n not in run.ckpt.all_steps():  # a killed run may have saved it already (same params)
    # With LoRA, iteration 0 saves the frozen base and every later one its adapters alone.
    run.ckpt.save_model(n, params, base_step=0 if n else None, meta={"iteration": n})
    run.ckpt.wait()
  failpoints.hit("before_metrics")
  append_metrics(metrics_path(run.workdir), record)
  for name in ("generate_shards", "rationalize_shards", "eval_shards", "train_ckpt"):
    Shards(run.dir(n, name)).remove()  # the iteration is done: they have served
  if run.board is not None:
    run.board.iteration(record, kept)
  tell(run, record)


def tell(run: Run, record: dict) -> None:
  """The iteration's log lines (summary, kept by difficulty, accuracy table) and plots."""
  task = run.exp.task
  diff_key, kept_key = f"accuracy_by_{task.difficulty_name}", f"kept_by_{task.difficulty_name}"
  logging.info("%s", report.summary_line(record))
  if record.get(kept_key):
    logging.info("%s", report.kept_line(record[kept_key], task.difficulty_name))
  metrics = read_jsonl(metrics_path(run.workdir))
  title = f"STaR on {task.name}"
  plots.plot_accuracy(metrics, run.workdir / "accuracy.png", title)
  if diff_key in record:
    logging.info("eval accuracy by %s (%%):\n%s", task.difficulty_name,
                 report.difficulty_table(metrics, diff_key))
    plots.plot_by_difficulty(metrics, diff_key, run.workdir / f"{diff_key}.png",
                             title, task.difficulty_label)
  rl_key = f"rl_star_by_{task.difficulty_name}"
  if rl_key in record:
    logging.info("RL-STaR per-step delta, predicted and measured accuracy (%%) by %s:\n%s",
                 task.difficulty_name, report.rl_star_table(metrics, rl_key))
    plots.plot_delta(metrics, rl_key, run.workdir / "delta.png", title,
                     task.difficulty_label)
