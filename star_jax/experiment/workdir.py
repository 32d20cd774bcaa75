"""What a workdir already holds: the recorded config, finished iterations, result shards.

Resuming is by construction: every artifact is written atomically once complete,
and each phase first looks for what an earlier (killed) process finished.
Every path is an etils.epath path, so a workdir may be local or gs://.

One run per workdir: ``WORKDIR/run.lock`` names the process that holds the workdir. A run
takes the lock before it writes anything and gives it back when it exits (normally, with an
error, or preempted). The lock is JSON: host, pid, boot id, start time and a heartbeat that a
background thread renews every ``HEARTBEAT_SECONDS``. A second launch on the workdir stops
with one line naming the holder:

  workdir runs/arith is in use by pid 4242 on host tpu-vm-0 (since 2026-12-06 04:03:58 UTC,
  heartbeat 12s ago); stop that run first, or use another --workdir

A lock left by a process that is gone is taken over with a warning: on the same host, its pid
is dead (or the host rebooted since); from another host (a ``gs://`` workdir shared by VMs),
its heartbeat is older than ``STALE_SECONDS``. A multi-host run shares one lock: process 0
takes it and tells the others whether it got it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid

import jax
import numpy as np
from etils import epath

from star_jax.config import OPERATIONAL_KEYS, Config, base_config, flatten, load, to_dict
from star_jax.runtime.distributed import (barrier, create_exclusive, gone, is_primary,
                                          this_process)
from star_jax.runtime.errors import UserError, WorkdirMismatchError
from star_jax.runtime.files import read_json, read_jsonl, write_atomic, write_jsonl

ARTIFACTS = ("config.json", "metrics.jsonl", "checkpoints", "pretrain_ckpt", "accuracy.png",
             "delta.png", "tensorboard")
# What only a run that recorded its config writes (a start that failed before leaves at most
# a tokenizer and compiled programs).
RUN_FILES = ("metrics.jsonl", "checkpoints", "pretrain_ckpt")
ConfigMismatchError = WorkdirMismatchError  # the name earlier releases raised


def iteration_dir(workdir: epath.PathLike, n: int, *parts: str) -> epath.Path:
  """``WORKDIR/iter_NNN/parts...``: what iteration ``n`` writes."""
  return epath.Path(workdir).joinpath(f"iter_{n:03d}", *parts)


def is_resume(config: Config, workdir: epath.PathLike) -> bool:
  """True when ``workdir`` holds this config's run; raises ``WorkdirMismatchError`` naming
  the keys that differ when it holds another's, or when it holds a run's files without the
  config.json that says whose they are. Writes nothing."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    found = [name for name in RUN_FILES if (epath.Path(workdir) / name).exists()]
    if found:  # put there by hand: whose config they were run with is unknown
      raise WorkdirMismatchError(
          f"{workdir} holds a run's {', '.join(found)} but no config.json, so whether they are "
          "this config's run is unknown; nothing was changed. To resume that run, copy its "
          "config.json there too; to start from its model, use an empty --workdir with "
          "--config.model.checkpoint=RUN/checkpoints/N --config.pretrain.steps=0; --overwrite "
          "deletes them and starts over.")
    return False
  recorded = read_json(path, WorkdirMismatchError)  # unreadable: one line, nothing changed
  old, new = flatten(recorded), flatten(to_dict(config))
  # A key a later release declared is absent from an earlier run's record; at its default it
  # keeps that release's behaviour, so the run resumes.
  missing = set(new) - set(old)
  defaults = flatten(to_dict(load(base_config(config.task)))) if missing else {}
  old.update({k: new[k] for k in missing if k in defaults and new[k] == defaults[k]})
  diff = sorted(k for k in set(old) | set(new)
                if k not in OPERATIONAL_KEYS and old.get(k, "<unset>") != new.get(k, "<unset>"))
  if diff:
    lines = [f"  {k}: {old.get(k, '<unset>')!r} (recorded) -> {new.get(k, '<unset>')!r}"
             for k in diff]
    raise WorkdirMismatchError(
        f"{workdir} holds a run with a different config; resuming would mix results:\n"
        + "\n".join(lines) + "\nUse another --workdir, or pass --overwrite to delete the "
        "earlier run's artifacts and start over.")
  return True


def record_config(config: Config, workdir: epath.PathLike) -> None:
  """Writes config.json: from here on the workdir holds this run."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  if is_primary():
    write_atomic(epath.Path(workdir) / "config.json",
                 json.dumps(to_dict(config), indent=2, sort_keys=True))
  barrier("config recorded")  # no process reads the workdir before every process checked it


def clear(workdir: epath.PathLike) -> None:
  """Deletes a previous run's artifacts (only the files a run writes)."""
  workdir = epath.Path(workdir)
  if not is_primary() or not workdir.is_dir():
    return
  for path in workdir.iterdir():
    if path.name in ARTIFACTS or path.name.startswith(("iter_", "tokenizer.", "accuracy_by_")):
      path.rmtree() if path.is_dir() else path.unlink()


def finished_iterations(workdir: epath.PathLike) -> list[int]:
  path = epath.Path(workdir) / "metrics.jsonl"
  done = [r.get("iteration") for r in read_jsonl(path, WorkdirMismatchError)]
  bad = [i for i in done if type(i) is not int or i < 0]  # noqa: E721 (True is no iteration)
  if bad:
    raise WorkdirMismatchError(f"{path}: iteration {bad[0]!r} is not a whole number >= 0; "
                               "nothing was changed (--overwrite starts the run over)")
  return done


class Shards:
  """Results of a long phase saved in numbered shards, so a killed phase resumes."""

  def __init__(self, directory: epath.PathLike | None):
    self.directory = None if directory is None else epath.Path(directory)

  def _path(self, k: int) -> epath.Path:
    return self.directory / f"shard_{k:05d}.jsonl"

  def load(self, k: int, ids: list[str]) -> list[dict] | None:
    if self.directory is None or not self._path(k).exists():
      return None
    rows = read_jsonl(self._path(k))
    if [r["id"] for r in rows] != ids:
      raise ValueError(f"{self._path(k)} holds results for other questions than this run "
                       "asks for; the workdir belongs to a different run")
    return rows

  def save(self, k: int, rows: list[dict]) -> None:
    if self.directory is not None:
      write_jsonl(self._path(k), rows)

  def remove(self) -> None:
    if self.directory is not None and is_primary() and self.directory.is_dir():
      self.directory.rmtree()


# --- one run per workdir -----------------------------------------------------------------

LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = float(os.environ.get("STAR_JAX_LOCK_HEARTBEAT_SECONDS", 60))
STALE_SECONDS = float(os.environ.get("STAR_JAX_LOCK_STALE_SECONDS", 600))


class WorkdirLockedError(UserError, RuntimeError):
  """Another live process holds the workdir's lock."""


def _when(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


class WorkdirLock:
  """The lock on ``workdir``: ``acquire`` (raises ``WorkdirLockedError``), ``release``; or
  ``with WorkdirLock(workdir):``. Directories it had to create are removed again on release
  when they are still empty: a run that fails to start leaves nothing behind."""

  def __init__(self, workdir: epath.PathLike):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self.token = uuid.uuid4().hex
    self._created: list[epath.Path] = []
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.held = False

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _record(self, started: float) -> dict:
    return dict(this_process(), started=started, heartbeat=time.time(), token=self.token)

  def acquire(self) -> None:
    error = ""
    if jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirLockedError as e:
        error = str(e)
    if jax.process_count() > 1:  # every process learns whether process 0 got it
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      got = multihost_utils.broadcast_one_to_all(np.int32(0 if error else 1))
      if not int(got) and not error:
        error = f"workdir {self.workdir} is in use by another run (process 0 says so)"
    if error:
      raise WorkdirLockedError(error)

  def _acquire(self) -> None:
    self._note_created()
    self.workdir.mkdir(parents=True, exist_ok=True)
    record = self._record(time.time())
    if self._create(record):
      self._hold(record)
      return
    held = self._read()
    if not held:  # another process may be between its create and its write: look again
      time.sleep(1.0)
      held = self._read()
    why = self._stale(held)
    if not why:
      self._undo_created()
      age = time.time() - float(held.get("heartbeat", 0))
      raise WorkdirLockedError(
          f"workdir {self.workdir} is in use by pid {held.get('pid')} on host "
          f"{held.get('host')} (since {_when(float(held.get('started', 0)))}, heartbeat "
          f"{age:.0f}s ago); stop that run first, or use another --workdir")
    logging.warning("taking over the lock of workdir %s from pid %s on host %s: %s",
                    self.workdir, held.get("pid"), held.get("host"), why)
    write_atomic(self.path, json.dumps(record))
    if self._read().get("token") != self.token:  # another process took it over at once
      raise WorkdirLockedError(f"workdir {self.workdir} was just taken by another run "
                               f"({self._read().get('host')}, pid {self._read().get('pid')})")
    self._hold(record)

  def _create(self, record: dict) -> bool:
    """Creates the lock file if there is none (atomically on a local disk)."""
    text = json.dumps(record)
    if "://" in str(self.path):  # an object store: no exclusive create; read back instead
      if self.path.exists():
        return False
      write_atomic(self.path, text)
      return self._read().get("token") == self.token
    return create_exclusive(str(self.path), text)

  def _read(self) -> dict:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):  # gone meanwhile, or half-written by a killed O_EXCL create
      return {}

  def _stale(self, held: dict) -> str:
    """Why the lock ``held`` belongs to nobody, or "" when its holder may be alive."""
    if not held or "pid" not in held:
      return "the lock file is empty or unreadable"
    age = time.time() - float(held.get("heartbeat", 0))
    why = gone(held)
    if why or held.get("host") == this_process()["host"]:
      return why
    if age > STALE_SECONDS:
      return f"its heartbeat is {age:.0f}s old (stale after {STALE_SECONDS:.0f}s)"
    return ""

  def _hold(self, record: dict) -> None:
    self.held = True
    self._thread = threading.Thread(target=self._beat, args=(record,), daemon=True,
                                    name="star_jax-workdir-lock")
    self._thread.start()

  def _beat(self, record: dict) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        write_atomic(self.path, json.dumps(dict(record, heartbeat=time.time())))
      except OSError as e:  # a full disk or a network blip: the next beat tries again
        logging.warning("could not renew the workdir lock %s: %s", self.path, e)

  def release(self) -> None:
    """Removes the lock if this process holds it (the lock of a process that took it over
    from this one is left alone), then the directories ``acquire`` created, if empty."""
    if not self.held:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    self.held = False
    try:
      if self._read().get("token") == self.token:
        self.path.unlink()
    except OSError as e:
      logging.warning("could not remove the workdir lock %s: %s", self.path, e)
    self._undo_created()

  def _note_created(self) -> None:
    """The directories ``mkdir`` will create, deepest first."""
    if "://" in str(self.workdir):
      return
    d = self.workdir
    while not d.exists() and d != d.parent:
      self._created.append(d)
      d = d.parent

  def _undo_created(self) -> None:
    for d in self._created:
      try:
        d.rmdir()
      except (OSError, ValueError):  # not empty: the run wrote something (epath: ValueError)
        break
    self._created = []
