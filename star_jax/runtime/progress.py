"""Progress bars for long phases (sampling, training)."""

from __future__ import annotations

import sys

import tqdm

from star_jax.runtime.distributed import is_primary


def progress(total: int, desc: str, unit: str) -> tqdm.tqdm:
  """A progress bar with rates; redrawn rarely when stderr is a log file, not a terminal."""
  tty = sys.stderr.isatty()
  return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=tty,
                   mininterval=0.2 if tty else 30.0, disable=not is_primary())
