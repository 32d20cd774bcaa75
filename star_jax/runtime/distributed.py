"""Multi-host runs on JAX's own multi-controller runtime (``jax.distributed``).

Every process runs the same program over the same host data: jitted functions
see global arrays sharded over the global mesh, so each question is sampled on
exactly one device and each training row lives on one data shard; results are
gathered back with ``process_allgather`` so every process takes the same
host-side decisions. Only process 0 writes files (orbax checkpoints are written
collectively by all of them).

Preemption notices: spot and preemptible TPU VMs, and maintenance events, send SIGTERM about
30 s before the VM goes. Inside ``preemption_handling()`` (the STaR loop) the notice sets a
flag; the next ``safe_point`` — the end of a train step (``finetune`` saves the train state
there) or of a sampling shard (saved already) — raises ``Preempted``, whose message is the one
line the command logs before it exits 0:

  preempted at iteration 1, phase train, step 5 of 8; rerun the same command to resume

The rerun resumes from what was saved, to the same results as an uninterrupted run. A second
SIGTERM ends the process at once (the last checkpoints still resume it), as does a notice
that meets no safe point within ``STAR_JAX_PREEMPT_GRACE_SECONDS`` (20) of its arrival; on that
forced path the workdir's lock is given back too, so a rerun starts at once. The notice is
received by a thread of its own the moment it arrives, not when the main thread next runs
Python (which, inside a compile or a long step, can be seconds later). Under
``jax.distributed`` the runtime's own preemption notifier receives the signal, and every
process stops at the same safe point (``multihost_utils.reached_preemption_sync_point``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from star_jax.runtime.errors import UserError


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
  """Starts jax.distributed from flags, or automatically on a multi-host Cloud TPU slice."""
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _on_multihost_tpu():
    jax.distributed.initialize()  # Cloud TPU: coordinator and ids come from the TPU metadata
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _on_multihost_tpu() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def is_primary() -> bool:
  return jax.process_index() == 0


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host) array, on every process."""
  if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# --- preemption notices ------------------------------------------------------------------

PREEMPT_GRACE_SECONDS = float(os.environ.get("STAR_JAX_PREEMPT_GRACE_SECONDS", 20))

_notice = threading.Event()
_where: dict = {"iteration": None}
_count = [0]  # safe points passed: the same sequence on every process of a multi-host run
_timer: list[threading.Timer] = []
_cleanups: list[Callable[[], None]] = []
_stop = {"line": ""}  # a request to stop at the next safe point: why
_received = [0]  # SIGTERMs the receiver thread read
_notice_lock = threading.RLock()


class Preempted(BaseException):
  """Raised at a safe point after a preemption notice (a BaseException, like
  KeyboardInterrupt: no ``except Exception`` on the way swallows it)."""


class StopRun(UserError, RuntimeError):
  """Raised at a safe point when the run must stop writing (its workdir's lock was taken
  over): the command prints the line and exits 2, nothing saved on the way."""


def _multihost_sync() -> bool:
  """Whether jax.distributed's preemption sync manager is running (it owns SIGTERM)."""
  if jax.process_count() < 2:
    return False
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return getattr(jax_distributed.global_state, "preemption_sync_manager", None) is not None


@contextlib.contextmanager
def preemption_handling() -> Iterator[None]:
  """SIGTERM is a preemption notice while inside (main thread only; elsewhere, and under
  jax.distributed's notifier, nothing is installed).

  The notice is received by a thread of its own, at once: Python runs a signal handler only
  in the main thread between bytecodes, so during a compile or a long step it would run
  seconds late. The C-level handler writes the signal's number to a socket
  (``signal.set_wakeup_fd``) whichever thread it interrupts, and the receiver thread reads it
  there: the grace starts when the notice arrives."""
  install = (threading.current_thread() is threading.main_thread() and not _multihost_sync())
  _notice.clear()
  _count[0] = _received[0] = 0
  _stop["line"] = ""
  receiver, previous, previous_fd = None, None, -1
  if install:
    read_end, write_end = socket.socketpair()
    write_end.setblocking(False)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_fd = signal.set_wakeup_fd(write_end.fileno(), warn_on_full_buffer=False)
    receiver = threading.Thread(target=_receive, args=(read_end,), daemon=True,
                                name="star_jax-sigterm")
    receiver.start()
  try:
    yield
  finally:
    if install:
      signal.set_wakeup_fd(previous_fd)
      signal.signal(signal.SIGTERM, previous)
      write_end.close()
      read_end.shutdown(socket.SHUT_RDWR)  # the receiver reads end-of-file and returns
      receiver.join(timeout=5)
      read_end.close()
    for timer in _timer:
      timer.cancel()
    _timer.clear()
    _notice.clear()
    _stop["line"] = ""
    _where["iteration"] = None


def _on_sigterm(signum, frame) -> None:
  """The Python-level handler (main thread, between bytecodes): its being installed makes the
  C handler write the wakeup byte. It sets the notice too, so a signal a process sends itself
  is seen at once; the receiver thread counts the notices (a second one ends the process)."""
  del signum, frame
  _first_notice()


def _receive(read_end: socket.socket) -> None:
  """The receiver thread: every SIGTERM byte the C handler wrote is a notice."""
  while True:
    try:
      data = read_end.recv(64)
    except OSError:
      return
    if not data:
      return
    for signum in data:
      if signum != signal.SIGTERM:
        continue
      _received[0] += 1
      if _received[0] > 1:  # a second notice: no more waiting
        _force_exit("a second preemption notice (SIGTERM); stopping now. Rerun the same "
                    "command: the run resumes from its last checkpoints")
      _first_notice()


def _first_notice() -> None:
  """The notice and its grace timer, once, whichever thread sees the signal first."""
  with _notice_lock:
    if _notice.is_set():
      return
    _notice.set()
    logging.warning("preemption notice (SIGTERM): stopping at the next safe point")
    timer = threading.Timer(PREEMPT_GRACE_SECONDS, _out_of_grace)
    timer.daemon = True
    timer.start()
    _timer.append(timer)


def _out_of_grace() -> None:
  _force_exit(f"preempted: no safe point within {PREEMPT_GRACE_SECONDS:.0f}s of the notice; "
              "stopping now. Rerun the same command: the run resumes from its last "
              "checkpoints")


def on_forced_exit(cleanup: Callable[[], None]) -> Callable[[], None]:
  """Registers ``cleanup`` (e.g. giving back the workdir's lock) to run when a notice ends the
  process without reaching a safe point; returns what unregisters it."""
  _cleanups.append(cleanup)
  return lambda: _cleanups.remove(cleanup) if cleanup in _cleanups else None


def _force_exit(line: str) -> None:
  """Ends the process now (as SIGKILL would, but with the lock given back and the line
  logged): the last checkpoints resume it."""
  logging.warning("%s", line)
  for cleanup in list(_cleanups):
    try:
      cleanup()
    except Exception as e:  # noqa: BLE001 - nothing may keep the process from ending
      logging.warning("cleanup on the way out failed: %s", e)
  logging.shutdown()
  os._exit(128 + signal.SIGTERM)


def stop_at_safe_point(line: str) -> None:
  """Asks the run to stop at its next safe point, with ``line`` (a ``StopRun``) and without
  saving anything more: e.g. its workdir's lock was taken by another run."""
  _stop["line"] = _stop["line"] or line


def note_iteration(n: int) -> None:
  """The STaR iteration under way, for the preemption line."""
  _where["iteration"] = n


def preemption_requested() -> bool:
  return _notice.is_set()


def safe_point(phase: str, step: int, total: int, save: Callable[[], None] | None = None
               ) -> None:
  """Stops here if a notice came: ``save()`` (what a rerun needs that is not saved yet), then
  raises ``Preempted``. ``phase`` is a progress label ("iter 1 train", "pretrain")."""
  _count[0] += 1
  if _stop["line"]:
    raise StopRun(_stop["line"])
  if _multihost_sync():
    stop = multihost_utils.reached_preemption_sync_point(_count[0])
  else:
    stop = _notice.is_set()
  if not stop:
    return
  if save is not None:
    save()
  words = phase.split()
  if len(words) > 2 and words[0] == "iter":  # "iter 1 train"
    phase = " ".join(words[2:])
  n = _where["iteration"]
  raise Preempted(f"preempted at iteration {'?' if n is None else n}, phase {phase}, step {step} "
                  f"of {total}; rerun the same command to resume")


# --- processes: who holds a workdir -------------------------------------------------------


def this_process() -> dict:
  """The host, pid and boot id of this process, as a lock file records its holder."""
  return {"host": socket.gethostname(), "pid": os.getpid(), "boot_id": _boot_id()}


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return ""


def gone(holder: dict) -> str:
  """Why the process ``holder`` (a ``this_process`` record) is known to be gone, or "" when it
  may be alive (always "" for another host: only a heartbeat can tell)."""
  if holder.get("host") != socket.gethostname():
    return ""
  pid = int(holder["pid"])
  if holder.get("boot_id") and holder.get("boot_id") != _boot_id():
    return "the host rebooted since"
  if pid == os.getpid():  # a container restarted with the same pid
    return f"pid {pid} is this process"
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return f"pid {pid} is gone"
  except PermissionError:  # another user's process: alive
    pass
  return ""
