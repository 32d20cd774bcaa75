"""Progress of long phases (sampling, training): a bar on a terminal, lines in a log file.

On a terminal it is a tqdm bar with rates. When stderr is a file or a pipe (a log, CI, a
TPU VM under nohup) a bar only ever shows its first line there, so progress is logged
instead: a line every ``LOG_EVERY_S`` seconds and one when the phase ends, e.g.
``iter 2 generate: 1536/4000 seq (38%), 41.2 seq/s, loss=0.412``.
"""

from __future__ import annotations

import logging
import sys
import time

import tqdm

from star_jax.runtime.distributed import is_primary

LOG_EVERY_S = 30.0


def progress(total: int, desc: str, unit: str):
  """A progress bar (terminal) or a progress logger (anything else)."""
  if sys.stderr.isatty():
    return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                     mininterval=0.2, disable=not is_primary())
  return LoggedProgress(total, desc, unit, enabled=is_primary())


class LoggedProgress:
  """The part of tqdm's interface the phases use (``update``, ``set_postfix``, a context),
  as log lines."""

  def __init__(self, total: int, desc: str, unit: str, enabled: bool = True,
               every_s: float = LOG_EVERY_S):
    self.total, self.desc, self.unit = total, desc, unit
    self.enabled, self.every_s = enabled, every_s
    self.n, self.postfix = 0, ""
    self.start = self.last = time.monotonic()

  def __enter__(self) -> "LoggedProgress":
    return self

  def __exit__(self, *exc) -> None:
    if exc[0] is None and self.total:
      self._log(done=True)

  def update(self, k: int = 1) -> None:
    self.n += k
    now = time.monotonic()
    if now - self.last >= self.every_s:
      self.last = now
      self._log()

  def set_postfix(self, refresh: bool = True, **values) -> None:
    del refresh
    self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

  def line(self, done: bool = False) -> str:
    seconds = time.monotonic() - self.start
    rate = f", {self.n / seconds:.1f} {self.unit}/s" if seconds > 0 else ""
    share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
    tail = f" in {seconds:.0f} s" if done else ""
    post = f", {self.postfix}" if self.postfix else ""
    return f"{self.desc}: {self.n}/{self.total} {self.unit}{share}{rate}{tail}{post}"

  def _log(self, done: bool = False) -> None:
    if self.enabled:
      logging.info("%s", self.line(done))
