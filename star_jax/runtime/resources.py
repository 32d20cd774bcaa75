"""What the process holds, read at the end of each iteration into its ``metrics.jsonl`` line:
a run that goes on for days shows there whether its memory, its compiled programs or its
open files grow (``python -m benchmarks.soak`` checks that they do not).

  process_rss_mib            resident memory (MiB)
  process_peak_rss_mib       the most resident memory so far (MiB)
  process_open_files         open file descriptors (files, sockets, pipes)
  process_threads            the process's threads (XLA's pools and the checkpointer's too)
  process_compiled_programs  {cache: programs} of each program cache, and "xla": every
                             program compiled in the process (compiling.compiled_programs)

The figures are the process's, not the run's: a resumed run starts afresh, and two runs
in one process (tests, notebooks) share their compiled programs.
"""

from __future__ import annotations

import os

from star_jax.runtime import compiling

KEYS = ("process_rss_mib", "process_peak_rss_mib", "process_open_files", "process_threads",
        "process_compiled_programs")


def process_fields() -> dict:
  """The ``process_*`` fields of an iteration's record (None where the system does not say:
  /proc is Linux's)."""
  status = _status()
  return {"process_rss_mib": _mib(status.get("VmRSS")),
          "process_peak_rss_mib": _mib(status.get("VmHWM")),
          "process_open_files": open_files(),
          "process_threads": int(status["Threads"].split()[0]) if "Threads" in status else None,
          "process_compiled_programs": compiling.compiled_programs()}


def open_files() -> int | None:
  """File descriptors this process holds open, or None where /proc/self/fd is not there."""
  try:
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
  except OSError:
    return None


def _status() -> dict[str, str]:
  try:
    with open("/proc/self/status") as f:
      return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
  except OSError:
    return {}


def _mib(value: str | None) -> float | None:
  """"123456 kB" -> MiB."""
  if not value:
    return None
  number, _, unit = value.strip().partition(" ")
  return round(int(number) * (1024 if unit == "kB" else 1) / 2 ** 20, 1)
