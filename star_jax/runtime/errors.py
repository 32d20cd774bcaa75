"""The errors a user can fix: each says what is wrong, where, and what to do.

The command-line tools print a ``UserError`` as one or two lines and exit non-zero
(``--traceback`` or ``STAR_JAX_TRACEBACK=1`` brings the traceback back); anything
else is a bug and keeps its traceback. Every class is also the built-in error it
refines (a bad key is a ``ValueError``, a missing file a ``FileNotFoundError``), so
code that catches those keeps working.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
  """Base class: an error in what the user gave (config, data, checkpoint, workdir)."""


class ConfigError(UserError, ValueError):
  """A config key or value that cannot be used; names the key and the nearest valid one."""


class DataError(UserError, ValueError):
  """A data file that is missing, malformed or unusable as configured."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the config names does not exist."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be loaded as asked: the message says why."""


class WorkdirMismatchError(UserError, ValueError):
  """The workdir holds a run with another config: resuming would mix results."""


class NonFiniteLossError(UserError, FloatingPointError):
  """Training diverged (a NaN or infinite loss): the message names the step."""


class DiskFullError(UserError, OSError):
  """No space left where the run writes: the message names the file (``filename``: where)."""

  def __str__(self) -> str:
    return self.strerror or super().__str__()


def did_you_mean(name: str, known: Iterable[str]) -> str:
  """" (did you mean 'x'?)" for the nearest of ``known``, or "" when nothing is near."""
  close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  return f" (did you mean {close[0]!r}?)" if close else ""
