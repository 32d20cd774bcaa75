"""Orbax checkpoints of the train state (params, optimizer state, step).

Params and optimizer state are separate items, so a sampler can restore the
params alone. Restoring takes the *target* layout (shapes, dtypes and
shardings on the current mesh), so a checkpoint written on one mesh restores
onto any other.

A model with LoRA adapters is saved as its base once (``save_model`` without
``base_step``) and as adapters alone after that: a few MB per STaR iteration, whose
metadata ``adapters_on`` names the step holding their base (``restore_model`` joins them).

With ``async_save`` a save returns once the arrays are copied to host memory
(orbax's default, synchronous device-to-host transfer: the caller may donate
or overwrite them at once) and the files are written by a background thread.
Orbax commits a step through a temporary directory and renames it when
complete, so a process killed mid-write leaves the previous step as the
latest; the next Checkpointer deletes the debris. Every read (the list of
steps, a restore) and every new save first waits for a write in flight.

A checkpoint damaged outside orbax (a copy interrupted before its commit marker, a truncated
file, bit rot in a bucket) is found when the newest is restored: each unusable step gets one
warning line and is set aside as ``N.unusable-<time>`` (nothing is deleted), and the restore
falls back to the newest good step; with none good it stops, naming each step's fault and
changing nothing. A step asked for by number that is damaged stops with one line.

``directory`` is any etils.epath path: local, or gs:// where gcsfs is installed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from star_jax.engine import lora
from star_jax.engine.params import abstract_like
from star_jax.engine.train_state import TrainState
from star_jax.runtime import failpoints
from star_jax.runtime.distributed import barrier
from star_jax.runtime.files import disk_full, is_disk_full
from star_jax.runtime.errors import CheckpointError, MissingFileError

T = TypeVar("T")
COMMIT_MARKER = "commit_success.txt"  # orbax writes it last, when a step is complete


class Checkpointer:
  """A directory of numbered train-state checkpoints."""

  def __init__(self, directory: epath.PathLike, max_to_keep: int | None = 2,
               async_save: bool = False):
    self.directory = epath.Path(directory)
    if "://" not in str(directory):  # abspath would turn gs://b/x into ./gs:/b/x
      self.directory = self.directory.resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)  # a killed save's debris
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item in ("params", "opt_state"):
      handler = ocp.StandardCheckpointHandler()
      registry.add(item, ocp.args.StandardSave, handler)
      registry.add(item, ocp.args.StandardRestore, handler)
    meta = _MetaHandler()
    registry.add("meta", ocp.args.JsonSave, meta)
    registry.add("meta", ocp.args.JsonRestore, meta)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          handler_registry=registry)

  def latest_step(self) -> int | None:
    """The newest complete step (a save in flight is waited for: orbax lists it already)."""
    self.wait()
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    self.wait()
    return list(self._manager.all_steps())

  def saving(self) -> bool:
    """Whether an asynchronous save is still being written."""
    return self._manager.is_saving_in_progress()

  def save(self, state: TrainState, meta: dict | None = None, force: bool = True,
           step: int | None = None) -> int:
    """Saves at ``step`` (default ``state.step``); ``meta`` is any JSON (e.g. the data
    position; its ``step`` is the train state's own).

    Asynchronous: returns after waiting for the previous save and copying ``state`` to
    host memory; ``state`` may be donated to the next train step right away.
    """
    meta = dict(meta or {}, step=int(state.step))
    step = int(state.step) if step is None else step
    self._save(step, ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.JsonSave(meta)), force=force)
    return step

  def _save(self, step: int, args: ocp.args.Composite, force: bool = True) -> None:
    """orbax's save; a full disk (now, or in the write of the save before) as one line."""
    try:
      failpoints.hit("checkpoint_write", self.directory / str(step))
      self._manager.save(step, args=args, force=force)
    except Exception as e:
      if is_disk_full(e):
        raise disk_full(self.directory, f"checkpoint step {step} in {self.directory}") from e
      raise

  def save_params(self, step: int, params: nnx.State, meta: dict | None = None) -> int:
    """Saves a model without optimizer state (e.g. the result of a STaR iteration)."""
    meta = dict(meta or {}, step=step)
    self._save(step, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                        meta=ocp.args.JsonSave(meta)))
    return step

  def save_model(self, step: int, params: nnx.State, base_step: int | None = None,
                 meta: dict | None = None) -> int:
    """A model for ``restore_model``. Without adapters: all of ``params``. With them: the base
    alone (``base_step`` None; the adapters must be fresh, remade from the seed on restore),
    or the adapters alone, on the base saved at ``base_step``."""
    adapters, base = lora.split(params)
    if not jax.tree.leaves(adapters):
      return self.save_params(step, params, meta)
    if base_step is None:
      if not lora.adapters_are_fresh(params):
        raise ValueError("saving a base whose adapters are trained would lose them: fold them "
                         "in first (engine.lora.restart), or pass base_step")
      return self.save_params(step, base, dict(meta or {}, lora_base=True))
    return self.save_params(step, adapters, dict(meta or {}, adapters_on=base_step))

  def delete(self, step: int) -> None:
    self.wait()
    self._manager.delete(step)

  def meta(self, step: int | None = None) -> dict:
    return self._restoring(step, lambda s: dict(self._manager.restore(s, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]))

  def restore_model(self, target: nnx.State, step: int | None = None) -> nnx.State:
    """What ``save_model`` saved, onto ``target``'s layout: adapters joined with the base they
    name, or a base (or plain model) with ``target``'s own adapters (so ``target`` must hold
    arrays where it has adapters)."""
    return self._restoring(step, lambda s: self._restore_model(target, s))

  def _restore_model(self, target: nnx.State, step: int) -> nnx.State:
    adapters_t, base_t = lora.split(target)
    on = self.meta(step).get("adapters_on")
    if on is None:
      return lora.join(adapters_t, self.restore_params(base_t, step))
    if not jax.tree.leaves(adapters_t):
      raise ValueError(f"checkpoint step {step} in {self.directory} holds LoRA adapters (on the "
                       f"base at step {on}): restore it into a model with model.lora_rank set")
    return lora.join(self.restore_params(adapters_t, step), self.restore_params(base_t, on))

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # an asynchronous save that failed
      _settle_background_writes()
      if is_disk_full(e):
        raise disk_full(self.directory, f"a checkpoint in {self.directory}") from e
      raise

  def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
    """Restores onto ``target``'s layout (a TrainState of arrays or ShapeDtypeStructs)."""
    target = abstract_like(target) if not _is_abstract(target) else target
    return self._restoring(step, lambda s: self._restore(target, s))

  def _restore(self, target: TrainState, step: int) -> tuple[TrainState, dict]:
    out = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target.params),
        opt_state=ocp.args.StandardRestore(target.opt_state),
        meta=ocp.args.JsonRestore()))
    meta = dict(out["meta"])
    step_arr = jax.device_put(np.asarray(meta["step"], np.int32), target.step.sharding)
    return TrainState(step_arr, out["params"], out["opt_state"]), meta

  def restore_params(self, target_params: nnx.State, step: int | None = None) -> nnx.State:
    target = abstract_like(target_params) if not _is_abstract(target_params) else target_params
    return self._restoring(step, lambda s: self._manager.restore(s, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))["params"])

  def _restoring(self, step: int | None, restore: Callable[[int], T]) -> T:
    """``restore(step)``; with ``step`` None the newest step that restores, the damaged newer
    ones reported and set aside (only once an older one has restored). An error that is not
    damage (a target of another shape: the caller's mistake) is raised as it is."""
    if step is not None:
      step = self._resolve(step)
      fault = self.fault(step) or self._try(restore, step)
      if fault:
        raise CheckpointError(f"checkpoint step {step} in {self.directory} is unusable: {fault}")
      return self._out
    bad = []
    for s in sorted(self.all_steps(), reverse=True):
      fault = self.fault(s) or self._try(restore, s)
      if not fault:
        for b, why in bad:
          self._set_aside(b, why, s)
        return self._out
      bad.append((s, fault))
    if not bad:
      self._resolve(None)  # raises: no checkpoint at all
    raise CheckpointError(f"no usable checkpoint in {self.directory}: " + "; ".join(
        f"step {b}: {why}" for b, why in bad) + ". Nothing was deleted.")

  def _try(self, restore: Callable[[int], Any], step: int) -> str:
    """"" with the result in ``self._out``, or the damage that stopped the restore."""
    try:
      self._out = restore(step)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore fail in many forms
      if not _DAMAGE.search(f"{type(e).__name__}: {e}"):
        raise
      return _one_line(e)
    return ""

  def fault(self, step: int) -> str:
    """What is wrong with step ``step``'s files that orbax itself does not check, or "": its
    commit marker, its metadata files (JSON)."""
    d = self.directory / str(step)
    items = [p for p in d.iterdir() if p.is_dir()]
    if not (d / COMMIT_MARKER).exists() and any((p / COMMIT_MARKER).exists() for p in items):
      return f"no commit marker {COMMIT_MARKER}: the save or copy did not finish"
    for path in [d / "_CHECKPOINT_METADATA"] + [p / name for p in items
                                                for name in ("_METADATA", "metadata")]:
      if path.exists():
        try:
          json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
          return f"{path.relative_to(d)} is unreadable ({e})"
    return ""

  def set_aside(self, step: int) -> epath.Path:
    """Renames step ``step`` out of orbax's sight (process 0), keeping its files: a step the
    caller found unusable and will make again."""
    target = self.directory / f"{step}.unusable-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(target)
    barrier("checkpoint set aside")
    self._manager.reload()
    return target

  def _set_aside(self, step: int, why: str, good: int) -> None:
    """Renames an unusable step out of orbax's sight (process 0), keeping its files."""
    target = self.directory / f"{step}.unusable-{time.strftime('%Y%m%d-%H%M%S')}"
    logging.warning("checkpoint step %d in %s is unusable (%s); using step %d, and keeping the "
                    "damaged one as %s", step, self.directory, why, good, target.name)
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(target)
    barrier("checkpoint set aside")
    self._manager.reload()

  def _resolve(self, step: int | None) -> int:
    steps = self.all_steps()  # waits for a save in flight: never read half a checkpoint
    step = max(steps, default=None) if step is None else step
    if step is None or step not in steps:
      raise FileNotFoundError(f"no checkpoint{'' if step is None else f' at step {step}'} in "
                              f"{self.directory} (have: {steps})")
    return step

  def close(self) -> None:
    """Waits for a save in flight (a full disk reported as one line, as ``wait`` does), then
    closes. Inside ``with Checkpointer(...)`` a close error met while another error is on its
    way out is logged, and that error is the one raised."""
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
      return
    try:
      self.close()
    except Exception as e:  # noqa: BLE001 - the error on its way out is the one to report
      logging.warning("while stopping on %s: the last checkpoint in %s was not written either "
                      "(%s)", exc_type.__name__, self.directory, _one_line(e))


def _settle_background_writes(timeout: float = 60.0) -> None:
  """Waits for orbax's writer threads still running after one of a save's writes failed (the
  others go on): a process that stops on that error would otherwise end under them, and each
  would print a traceback after the run's one line."""
  deadline = time.time() + timeout
  for thread in threading.enumerate():
    if type(thread).__module__.startswith("orbax.") and thread is not threading.current_thread():
      thread.join(max(0.0, deadline - time.time()))


class _MetaHandler(ocp.JsonCheckpointHandler):
  """orbax's JSON handler for a step's ``meta``, with the failpoint of the asynchronous write
  (``checkpoint_async_write``: the fault tests' full disk in the background thread, after the
  step's temporary directory exists)."""

  async def _save_fn(self, x, directory):
    failpoints.hit("checkpoint_async_write", directory)
    await super()._save_fn(x, directory)


# How orbax and tensorstore report files that are cut short or garbled (not a wrong target).
_DAMAGE = re.compile(r"DATA_LOSS|OUT_OF_RANGE|Error reading|Error decoding|error while reading|"
                     r"JSONDecodeError|Unterminated|Expecting .* delimiter|truncated|corrupt",
                     re.IGNORECASE)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()).split(" See full TensorStore details")[0]
  return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _is_abstract(tree: Any) -> bool:
  leaves = jax.tree.leaves(tree)
  return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def is_star_jax_checkpoint(path: epath.PathLike) -> bool:
  """An orbax directory written by star_jax (numbered step folders), e.g. WORKDIR/checkpoints."""
  path = epath.Path(path)
  return path.is_dir() and any(d.name.isdigit() for d in path.iterdir())


def load_params(path: epath.PathLike, target: Any) -> Any:
  """Params from a star_jax (orbax) checkpoint directory, onto ``target``'s layout."""
  if not epath.Path(path).exists():
    raise MissingFileError(f"model.checkpoint {str(path)!r} does not exist")
  ckpt = Checkpointer(path, max_to_keep=None)
  try:
    return ckpt.restore_model(target)
  except (FileNotFoundError, CheckpointError):
    raise
  except Exception as e:  # orbax reports structure/shape mismatches in many forms
    raise CheckpointError(f"checkpoint {str(path)!r} does not match model config "
                          f"{jax.tree.structure(target)}: {e}") from e
  finally:
    ckpt.close()
