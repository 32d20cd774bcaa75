"""One resumable train loop for every trainer in star_jax: fine-tuning (STaR's M_n and M_0's
pretraining), the policy steps of GRPO's family and TRICE, the verifier's DPO.

Each trainer brings its own loss and batches as a step function, ``step(state, s) ->
(state, metrics)``; the loop brings what a run needs around it, the same for all:

- **resume**: the newest checkpoint that restores (a damaged one set aside, the one before it
  used) gives the step to continue from, and its ``meta`` what the steps before contributed;
- **checkpoints kept two deep**: every ``checkpoint_every`` steps and at the end, the older
  ones deleted only once the newest's loss is known to be finite, so a damaged newest
  checkpoint always has one to fall back to;
- **the non-finite guard**: a step's loss is the loss of the state after the step before, so a
  NaN at step s means the state after s - 1 steps is bad: its checkpoint (and later ones) is
  deleted, the stop is recorded for the rerun to say, and the run stops in one line;
- **preemption safe points** after every step (``distributed.safe_point``: saved, then stopped);
- **metrics read one step late**: a step's device metrics are read after the next step is
  dispatched, so the host never stalls the device; ``on_step(s, host_metrics)`` sees each;
- **progress** and the time the loop spent blocked in saves.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Callable

import jax
import numpy as np
from etils import epath

from star_jax.hub.checkpointer import Checkpointer
from star_jax.runtime import distributed, failpoints
from star_jax.runtime.errors import NonFiniteLossError
from star_jax.runtime.progress import progress

STOP_FILE = "stopped_nonfinite.json"
Step = Callable[[Any, int], tuple[Any, dict]]


class TrainLoop:
  """``steps`` steps of ``desc`` (a progress label), checkpointed in ``ckpt_dir`` (None: not
  checkpointed, not resumable). Use as a context manager: leaving it waits for the last save
  (and a save that failed never hides the error on its way out).

    with TrainLoop("iter 1 train", steps, ckpt_dir, checkpoint_every=50) as loop:
      state = loop.resume(state)          # loop.start, loop.meta: where it continues
      state = loop.run(state, step, meta=lambda: {...})
  """

  def __init__(self, desc: str, steps: int, ckpt_dir: epath.PathLike | None = None, *,
               checkpoint_every: int = 0, async_save: bool = True, step_key: str = "step",
               step_failpoint: str = "train_step",
               postfix: Callable[[dict], dict] | None = None):
    self.desc, self.steps = desc, steps
    self.ckpt = (Checkpointer(ckpt_dir, max_to_keep=None, async_save=async_save)
                 if ckpt_dir else None)
    self.checkpoint_every, self.step_key = checkpoint_every, step_key
    self.step_failpoint = step_failpoint
    self.postfix = postfix or (lambda m: {"loss": f"{m['loss']:.3f}"} if "loss" in m else {})
    self.start, self.meta = 0, {}
    self.records: list[dict] = []  # each step's host metrics, from start + 1 on
    self.save_seconds: list[float] = []
    self._saved: list[int] = []

  def __enter__(self) -> "TrainLoop":
    return self

  def __exit__(self, *exc) -> None:
    if self.ckpt is not None:
      self.ckpt.__exit__(*exc)

  # -- resume -------------------------------------------------------------------------------
  def resume(self, state):
    """``state`` from the newest checkpoint that restores, else as given; sets ``start`` (the
    steps done) and ``meta`` (what the checkpoint recorded)."""
    if self.ckpt is None:
      return state
    self._saved = self.ckpt.all_steps()  # oldest first
    stopped = _read_stop(self.ckpt)
    if self._saved:
      state, self.meta = self.ckpt.restore(state)
      self._saved = self.ckpt.all_steps()
      self.start = int(self.meta[self.step_key])
      logging.info("%s: resuming from the checkpoint at step %d of %d", self.desc, self.start,
                   self.steps)
    if stopped:
      logging.warning("%s: an earlier run stopped at step %d, where the loss was %s; %s",
                      self.desc, stopped["step"], stopped["loss"],
                      f"resuming from step {self.start}, the last checkpoint whose loss was "
                      "finite" if self._saved else "no checkpoint before it had a finite "
                      "loss: starting over")
    return state

  # -- run ----------------------------------------------------------------------------------
  def run(self, state, step: Step, *, meta: Callable[[], dict] | None = None,
          on_save: Callable[[int], None] | None = None,
          on_step: Callable[[int, dict], None] | None = None):
    """Steps ``start + 1 .. steps``; returns the state after the last. ``meta()`` is saved with
    each checkpoint (beside the step and its loss); ``on_save(s)`` writes what must go with
    the checkpoint of step ``s`` (a step log, a method's own state), just before it."""
    ckpt, steps = self.ckpt, self.steps
    pending: list = []  # (step, device metrics) not read yet
    holder = {"state": state}

    def settle() -> None:
      s, metrics = pending.pop()
      host = {k: _host(v) for k, v in metrics.items()}
      loss = host.get("loss")
      if loss is not None and not math.isfinite(loss):
        self._stop_nonfinite(s, loss)
      self.records.append(host)
      if on_step is not None:
        on_step(s, host)

    def save(s: int) -> None:
      if pending:
        settle()  # never checkpoint a state whose loss is not known to be finite
      if self._saved and self._saved[-1] == s:  # checkpoints are numbered by the loop's step
        return
      t0 = time.perf_counter()
      # Every loss so far is finite, so the newest checkpoint's is: the older ones can go.
      for old in self._saved[:-1]:
        ckpt.delete(old)
      self._saved[:-1] = []
      if on_save is not None:
        on_save(s)
      last = next((r["loss"] for r in reversed(self.records) if "loss" in r),
                  self.meta.get("loss", math.nan))
      self._saved.append(ckpt.save(holder["state"], step=s, meta={
          **(meta() if meta else {}), self.step_key: s, "loss": last}))
      self.save_seconds.append(time.perf_counter() - t0)

    with progress(steps, self.desc, "step") as bar:
      bar.update(self.start)
      for s in range(self.start + 1, steps + 1):
        holder["state"], metrics = step(holder["state"], s)
        if pending:  # read step s - 1's metrics after dispatching step s: no host stall
          settle()
          bar.set_postfix(**self.postfix(self.records[-1]), refresh=False)
        pending.append((s, metrics))
        due = s == steps or (self.checkpoint_every and s % self.checkpoint_every == 0)
        if ckpt is not None and due:
          save(s)
          failpoints.hit("train_checkpoint")
        bar.update(1)
        failpoints.hit(self.step_failpoint)
        # After a preemption notice: this step saved (unless it is already), then stop.
        distributed.safe_point(self.desc, s, steps,
                               (lambda s=s: save(s)) if ckpt is not None else None)
    if pending:
      settle()
    if self.save_seconds:  # the loop's stall: waiting for the previous save + copying to host
      logging.info("%s: %d checkpoints, %.3fs blocked in save (mean %.1fms, max %.1fms)",
                   self.desc, len(self.save_seconds), sum(self.save_seconds),
                   1e3 * np.mean(self.save_seconds), 1e3 * max(self.save_seconds))
    return holder["state"]

  def _stop_nonfinite(self, s: int, loss: float) -> None:
    """The loss of step ``s`` is the loss of the state after ``s - 1`` steps: that state is
    bad, and so is any checkpoint of it or after it."""
    if self.ckpt is None:
      raise NonFiniteLossError(f"training loss became {loss} at step {s - 1}; lower "
                               "train.learning_rate or check the data")
    _discard_from(self.ckpt, self._saved, s - 1, loss)
    kept = (f"the checkpoint at step {self._saved[-1]}, the last whose loss was finite, is kept"
            if self._saved else "no checkpoint had a finite loss")
    raise NonFiniteLossError(f"training loss became {loss} at step {s - 1}; {kept}. "
                             "Lower train.learning_rate or check the data")


def _host(v):
  """A device or numpy scalar as a Python float; anything else (a host record's ints, lists,
  dicts) as it is."""
  if isinstance(v, (jax.Array, np.ndarray, np.generic)) and np.ndim(v) == 0:
    return float(v)
  return v


def _discard_from(ckpt: Checkpointer, saved: list[int], bad_step: int, loss: float) -> None:
  """Deletes the checkpoints at and after ``bad_step`` (a state whose loss is not finite) and
  records where the run stopped, for the rerun to say."""
  for step in [s for s in saved if s >= bad_step]:
    ckpt.delete(step)
    saved.remove(step)
  (ckpt.directory / STOP_FILE).write_text(json.dumps({"step": bad_step, "loss": str(loss)}))


def _read_stop(ckpt: Checkpointer) -> dict | None:
  """What ``_discard_from`` recorded, once (the file is removed)."""
  path = ckpt.directory / STOP_FILE
  if not path.exists():
    return None
  stopped = json.loads(path.read_text())
  path.unlink()
  return stopped
