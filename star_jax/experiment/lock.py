"""One run per workdir: ``WORKDIR/run.lock`` names the process that holds the workdir.

A run takes the lock before it writes anything and gives it back when it exits (normally,
with an error, preempted, or forced out when a notice meets no safe point). The lock is JSON:
host, pid, boot id, start time, a token of its own and a heartbeat that a background thread
renews every ``HEARTBEAT_SECONDS``. A second launch on the workdir stops with one line naming
the holder:

  workdir runs/arith is in use by pid 4242 on host tpu-vm-0 (since 2026-12-06 04:03:58 UTC,
  heartbeat 12s ago); stop that run first, or use another --workdir

A lock left by a process that is gone is taken over with a warning: on the same host, its pid
is dead (or the host rebooted since); from another host (a ``gs://`` workdir shared by VMs),
its heartbeat is older than ``STALE_SECONDS``. A multi-host run shares one lock: process 0
takes it and tells the others whether it got it.

Exclusive, however launches race:

- **Taking over** replaces exactly the stale lock that was judged, or nothing: on a local disk
  the stale file is renamed aside under a unique name (one rename wins; what was moved is
  checked to be that file, and put back if another launcher's fresh lock was moved instead),
  then the new lock is created with ``O_EXCL``; on ``gs://`` the replacement is conditional on
  the stale object's generation (google-cloud-storage's ``if_generation_match``).
- **The heartbeat checks that the lock is still its own** before renewing it, through the file
  it verified (local: the same open file; ``gs://``: the generation it last wrote). A run whose
  lock was taken over (its heartbeat was late past ``STALE_SECONDS``, e.g. a VM paused for
  minutes) writes no lock again, and stops at its next safe point with one line, saving
  nothing more (``distributed.stop_at_safe_point``); its release leaves the new holder's lock.
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

from star_jax.runtime import distributed
from star_jax.runtime.distributed import gone, this_process
from star_jax.runtime.lockfile import lock_file
from star_jax.runtime.errors import UserError

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

  def __init__(self, workdir: epath.PathLike, file=None):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self.file = file if file is not None else lock_file(self.path)
    self.token = uuid.uuid4().hex
    self._created: list[epath.Path] = []
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._unregister = lambda: None
    self.held = False
    self.lost = ""  # why the lock is no longer this run's, once a beat found out

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
    if "://" not in str(self.workdir):  # an object store has no directories to make
      self.workdir.mkdir(parents=True, exist_ok=True)
    record = self._record(time.time())
    if self.file.create(json.dumps(record)):
      self._hold(record)
      return
    held, version = self.file.read()
    if not held:  # a heartbeat caught mid-write (renewed in place): look again
      time.sleep(1.0)
      held, version = self.file.read()
    why = self._stale(held)
    if not why:
      self._undo_created()
      age = time.time() - float(held.get("heartbeat", 0))
      raise WorkdirLockedError(
          f"workdir {self.workdir} is in use by pid {held.get('pid')} on host "
          f"{held.get('host')} (since {_when(float(held.get('started', 0)))}, heartbeat "
          f"{age:.0f}s ago); stop that run first, or use another --workdir")
    if not self.file.replace(version, json.dumps(record)):
      self._undo_created()
      now, _ = self.file.read()
      raise WorkdirLockedError(f"workdir {self.workdir} was just taken by another run "
                               f"(pid {now.get('pid')} on host {now.get('host')})")
    logging.warning("took over the lock of workdir %s from pid %s on host %s: %s",
                    self.workdir, held.get("pid"), held.get("host"), why)
    self._hold(record)

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
    self._unregister = distributed.on_forced_exit(self._give_back)
    self._thread = threading.Thread(target=self._beat, args=(record,), daemon=True,
                                    name="star_jax-workdir-lock")
    self._thread.start()

  def _beat(self, record: dict) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        ours = self.file.renew(self.token, json.dumps(dict(record, heartbeat=time.time())))
      except OSError as e:  # a full disk or a network blip: the next beat tries again
        logging.warning("could not renew the workdir lock %s: %s", self.path, e)
        continue
      if not ours:
        self._lose()
        return

  def _lose(self) -> None:
    now, _ = self.file.read()
    who = (f"pid {now.get('pid')} on host {now.get('host')}" if now else "someone (the lock "
           "file is gone)")
    self.lost = (f"workdir {self.workdir} was taken over by {who} while this run (pid "
                 f"{this_process()['pid']}) held it; this run stopped without writing anything "
                 "more. Let that run finish, or stop it and rerun this command to resume")
    logging.error("%s", self.lost)
    distributed.stop_at_safe_point(self.lost)

  def _give_back(self) -> None:
    """The lock removed if it is still this run's (no thread joined: the forced way out)."""
    if self.held:
      self.file.remove(self.token)

  def release(self) -> None:
    """Removes the lock if this process holds it (the lock of a process that took it over
    from this one is left alone), then the directories ``acquire`` created, if empty."""
    if not self.held:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    self._unregister()
    try:
      self.file.remove(self.token)
    except OSError as e:
      logging.warning("could not remove the workdir lock %s: %s", self.path, e)
    self.held = False
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
