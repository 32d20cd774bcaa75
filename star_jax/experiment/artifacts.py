"""What a finished iteration leaves in the workdir, and what it tells the user.

`finish` writes, in this order: the kept rationales and eval completions
(``iter_NNN/*.jsonl``), the model checkpoint, then the iteration's line in
``metrics.jsonl`` — last, because that line marks the iteration done for a
resumed run. Then the phase shards are deleted, the log lines and the plots
are written.
"""

from __future__ import annotations

import logging

from etils import epath

from star_jax.experiment import plots, report
from star_jax.experiment.board import Board
from star_jax.experiment.workdir import Shards, iteration_dir
from star_jax.hub.checkpointer import Checkpointer
from star_jax.runtime import failpoints
from star_jax.runtime.files import read_jsonl, write_jsonl
from star_jax.tasks import Task

PHASE_DIRS = ("generate_shards", "rationalize_shards", "eval_shards", "eval_k_shards",
              "train_ckpt", "trice_init_shards", "trice_memory", "search_shards")


def metrics_path(workdir: epath.PathLike) -> epath.Path:
  return epath.Path(workdir) / "metrics.jsonl"


def append_metrics(path: epath.PathLike, record: dict) -> None:
  """Rewrites metrics.jsonl with one more line (atomic: never a partial line)."""
  rows = [r for r in read_jsonl(path) if r.get("iteration") != record["iteration"]]
  write_jsonl(path, sorted(rows + [record], key=lambda r: r["iteration"]))


def drop_metrics(workdir: epath.PathLike, n: int) -> None:
  """Removes iteration ``n``'s line (and any later one) from metrics.jsonl: the iterations
  a resumed run does again."""
  path = metrics_path(workdir)
  write_jsonl(path, [r for r in read_jsonl(path) if r["iteration"] < n])


def finish(workdir: epath.PathLike, ckpt: Checkpointer, board: Board | None, task: Task,
           record: dict, eval_records: list[dict], kept: list[dict], params) -> None:
  """Writes iteration ``record["iteration"]``'s artifacts, checkpoint and metrics line, then
  logs and plots."""
  n = record["iteration"]
  if n > 0:
    write_jsonl(iteration_dir(workdir, n, "kept.jsonl"), kept)
  write_jsonl(iteration_dir(workdir, n, "eval.jsonl"), eval_records)
  if n not in ckpt.all_steps():  # a killed run may have saved it already (same params)
    # With LoRA, iteration 0 saves the frozen base and every later one its adapters alone.
    ckpt.save_model(n, params, base_step=0 if n else None, meta={"iteration": n})
    ckpt.wait()
  failpoints.hit("before_metrics")
  append_metrics(metrics_path(workdir), record)
  for name in PHASE_DIRS:
    Shards(iteration_dir(workdir, n, name)).remove()  # the iteration is done: they have served
  if board is not None:
    board.iteration(record, kept)
  tell(workdir, task, record)


def tell(workdir: epath.PathLike, task: Task, record: dict) -> None:
  """The iteration's log lines (summary, kept by difficulty, accuracy table) and plots."""
  workdir = epath.Path(workdir)
  diff_key, kept_key = f"accuracy_by_{task.difficulty_name}", f"kept_by_{task.difficulty_name}"
  logging.info("%s", report.summary_line(record))
  if record.get(kept_key):
    logging.info("%s", report.kept_line(record[kept_key], task.difficulty_name))
  metrics = read_jsonl(metrics_path(workdir))
  title = f"STaR on {task.name}"
  plots.plot_accuracy(metrics, workdir / "accuracy.png", title)
  if diff_key in record:
    logging.info("eval accuracy by %s (%%):\n%s", task.difficulty_name,
                 report.difficulty_table(metrics, diff_key))
    plots.plot_by_difficulty(metrics, diff_key, workdir / f"{diff_key}.png",
                             title, task.difficulty_label)
  rl_key = f"rl_star_by_{task.difficulty_name}"
  if rl_key in record:
    logging.info("RL-STaR per-step delta, predicted and measured accuracy (%%) by %s:\n%s",
                 task.difficulty_name, report.rl_star_table(metrics, rl_key))
    plots.plot_delta(metrics, rl_key, workdir / "delta.png", title,
                     task.difficulty_label)
