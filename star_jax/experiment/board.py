"""TensorBoard event files in ``WORKDIR/tensorboard`` (written with tensorboardX: no TensorFlow).

  pip install tensorboard && tensorboard --logdir WORKDIR/tensorboard

Scalars: every training step's loss, learning rate, gradient norm and tokens/s under
``train/`` (the step axis counts every step of the run: pretraining, then each
iteration's), a policy-gradient step's reward, KL, entropy and clip fraction under ``rl/``, and every iteration's metrics under ``eval/``, ``kept/`` and ``time/`` (the
step axis is the iteration); text: a table of a few kept rationales per iteration.
Only process 0 writes.
"""

from __future__ import annotations

from etils import epath

from star_jax.runtime.distributed import is_primary
from star_jax.runtime.files import read_jsonl

KEPT_SHOWN = 5
RL_SCALARS = ("reward_mean", "all_right_share", "all_wrong_share", "kl", "entropy",
              "clip_fraction", "completion_length")


class Board:
  """The run's TensorBoard writer (a no-op on other processes than 0)."""

  def __init__(self, workdir: epath.PathLike):
    self._writer = None
    if is_primary():
      from tensorboardX import SummaryWriter
      self._writer = SummaryWriter(str(epath.Path(workdir) / "tensorboard"),
                                   flush_secs=30)  # gs:// needs google-cloud-storage

  def train_step(self, step: int, metrics: dict) -> None:
    if self._writer is None:
      return
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s"):
      if key in metrics:
        self._writer.add_scalar(f"train/{key}", metrics[key], step)
    for key in RL_SCALARS:  # a policy-gradient step's (grpo.py)
      if key in metrics:
        self._writer.add_scalar(f"rl/{key}", metrics[key], step)

  def iteration(self, record: dict, kept: list[dict]) -> None:
    """The iteration's numbers (nested ones flattened: eval/accuracy_by_digits/4) and kept."""
    if self._writer is None:
      return
    n = record["iteration"]
    for key, value in _flat(record):
      group = ("time" if key.endswith("_seconds") else
               "eval" if key.startswith(("eval_", "accuracy_by_", "rl_star_by_")) else
               "process" if key.startswith("process_") else "kept")
      self._writer.add_scalar(f"{group}/{key}", value, n)
    if kept:
      rows = ["| source | question | rationale | answer |", "| --- | --- | --- | --- |"]
      for k in kept[:KEPT_SHOWN]:
        cell = lambda s: str(s).replace("|", "\\|").replace("\n", "<br>")
        rows.append(f"| {k['source']} | {cell(k['question'])} | {cell(k['rationale'])} | "
                    f"{cell(k['answer'])} |")
      self._writer.add_text("kept/examples", "\n".join(rows), n)
    self._writer.flush()

  def step_callback(self, workdir: epath.PathLike, iteration: int):
    """The per-step callback of ``iteration``'s training: its steps after the run's earlier
    ones on TensorBoard's step axis (pretraining is iteration 0's)."""
    offset = steps_before(read_jsonl(epath.Path(workdir) / "metrics.jsonl"), iteration)
    return lambda step, metrics: self.train_step(offset + step, metrics)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _flat(record: dict, prefix: str = ""):
  for key, value in record.items():
    if key == "iteration":
      continue
    if isinstance(value, dict):
      yield from _flat(value, f"{prefix}{key}/")
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
      yield f"{prefix}{key}", float(value)


def steps_before(metrics: list[dict], iteration: int) -> int:
  """Training steps of the run before ``iteration``'s (pretraining counts in iteration 0)."""
  return sum(int(m.get("pretrain_steps", 0) or 0) + int(m.get("train_steps", 0) or 0)
             for m in metrics if m["iteration"] < iteration)
