"""The error boundary of every command-line tool (``python -m star_jax.main`` and the rest).

``run(main)`` is ``absl.app.run(main)`` that prints what a user can fix as one or two
lines and exits 2, with no traceback: the project's own errors (``errors.UserError``:
config, data, checkpoint, workdir mismatch), a memory budget overrun, and anything the
command line itself got wrong (an unknown ``--config.*`` key, a missing config file, a bad
variant). ``--traceback`` (or ``STAR_JAX_TRACEBACK=1``) brings the traceback back; any
other exception is a bug and keeps it. ``--help`` exits 0.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import shutil
import sys
from typing import Callable

from absl import app, flags

from star_jax.runtime.errors import DiskFullError, UserError

UsageError = app.UsageError  # wrong positional arguments: absl prints the usage, exits 1

HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def log_progress() -> None:
  """The project's own INFO lines (phases, progress, timings) on stderr; libraries' INFO
  chatter (orbax: ~20 lines a save; jax, TFDS) kept out, their warnings kept. An explicit
  ``--verbosity`` wins."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  quiet = ("/orbax/", "/jax/", "/tensorflow_datasets/", "/etils/")
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or not any(q in r.pathname for q in quiet))
  # A full disk under an orbax save: each of its writer threads logs the error with a traceback
  # (hundreds of lines); the run's own one line (errors.DiskFullError) says it once.
  logging.get_absl_handler().addFilter(
      lambda r: not (("/orbax/" in r.pathname or "/asyncio/" in r.pathname)
                     and "No space left on device" in r.getMessage()
                     + str(r.exc_info[1] if r.exc_info else "")))


def cpu_where_no_accelerator() -> None:
  """jax's platforms set to the CPU on a host with libtpu installed (the ``[tpu]`` extra, for
  ``star_jax.plan --topology``) but no TPU chip and no GPU. jax would try the TPU backend
  anyway, and libtpu prints five lines of errors (TPU_ACCELERATOR_TYPE, TPU_WORKER_HOSTNAMES)
  before jax falls back to the CPU. A ``JAX_PLATFORMS`` the user set wins; topologies still
  compile for TPUs (``engine/chips.py`` loads libtpu for that itself)."""
  import importlib.util
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return
  try:
    import jax
    from jax._src import hardware_utils as hw
    if (jax.config.jax_platforms or hw.num_available_tpu_chips_and_device_id()[0]
        or hw.has_visible_nvidia_gpu() or hw.num_available_amd_gpus(stop_at=1)):
      return
  except (ImportError, AttributeError, TypeError):  # jax's private module moved: keep going
    return
  jax.config.update("jax_platforms", "cpu")


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  cpu_where_no_accelerator()
  verbose = "--traceback" in argv or os.environ.get("STAR_JAX_TRACEBACK", "") not in ("", "0")
  argv = [a for a in argv if a != "--traceback"]
  prog = _prog(argv[0])
  started = []
  # jax tries every backend it knows: on a host without a TPU its INFO line about libtpu
  # reads like a failure. It is not one; keep it out of the log.
  std_logging.getLogger("jax._src.xla_bridge").addFilter(
      lambda r: "Unable to initialize backend" not in r.getMessage())

  def guarded(args):
    started.append(True)
    return main(args)

  def parse(args):
    """absl's parse, with a bad flag (a config file that fails to load or raises, a bad
    value) reported as one line."""
    try:
      rest = flags.FLAGS(args)
      for name in ("config",):  # ml_collections defers a config file's load error to here
        if name in flags.FLAGS:
          getattr(getattr(flags.FLAGS, name), "to_dict", None)
      return rest
    except (flags.Error, OSError) as e:
      if verbose:
        raise
      _fail(prog, flag_message(e))

  try:
    app.run(guarded, argv=argv, flags_parser=parse)
  except SystemExit as e:
    if any(a in HELP_FLAGS for a in argv[1:]) and e.code in (0, 1, None):
      raise SystemExit(0) from None  # absl exits 1 after printing the help it was asked for
    raise
  except Exception as e:  # noqa: BLE001 - the boundary: sorted below, re-raised if a bug
    if verbose or not (isinstance(e, (UserError, MemoryError)) or not started):
      raise
    _fail(prog, message(e, argv))


def _fail(prog: str, text: str) -> None:
  sys.stderr.write(f"{prog}: error: {text}\n(run again with --traceback for the details)\n")
  sys.stderr.flush()
  sys.exit(2)


def flag_message(e: BaseException) -> str:
  """A flag's parse error in one line: the flag, then the last line of any traceback in it
  (the config file's own error) or the file that could not be read."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  if not lines:
    return type(e).__name__
  missing = [i for i, ln in enumerate(lines) if "[Errno" in ln]
  if missing:
    i = missing[0]
    return f"cannot read config file {lines[i - 1]}: {lines[i].split('] ', 1)[-1]}"
  if len(lines) > 1 and any(ln.startswith("Traceback") for ln in lines):
    return f"{lines[0].split(': Error whilst', 1)[0]}: {lines[-1]}"
  return lines[0]


def message(e: BaseException, argv: list[str]) -> str:
  """``e`` as one readable line (two at most): ml_collections' escaped "did you mean"
  unwrapped, and the command-line flag that caused it named."""
  text = str(e.args[0]) if e.args and isinstance(e, (KeyError, AttributeError)) else str(e)
  text = text.strip()
  if isinstance(e, DiskFullError):
    return (f"{text}{free_space(e.filename)}. Earlier files are intact: free some space and "
            "rerun the same command to resume")
  if isinstance(e, (KeyError, AttributeError)):
    # ml_collections' unknown key, escaped through three exceptions: "'\\'key\\'\\nDid you
    # mean "x" instead of "key"?'"
    mean = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    name = mean.group(2) if mean else re.sub(r"^[\\'\"]+|[\\'\"]+$", "", text.split("\\n")[0])
    flag = next((a.split("=", 1)[0] for a in argv[1:]
                 if a.startswith("--") and re.search(rf"[.]{re.escape(name)}(=|$)", a)), None)
    hint = f" (did you mean {mean.group(1)!r}?)" if mean else ""
    return f"unknown config key {name!r}{f' in {flag}' if flag else ''}{hint}"
  lines = [ln for ln in text.splitlines() if ln.strip()]
  if len(lines) > 12:
    lines = lines[:12] + [f"... ({len(lines) - 12} more lines)"]
  return "\n".join(lines) if lines else type(e).__name__


def free_space(path: str | None) -> str:
  """"; N MiB free there" for a local ``path`` (its nearest existing parent), else ""."""
  if not path or "://" in path:
    return ""
  d = os.path.abspath(path)
  while not os.path.exists(d) and os.path.dirname(d) != d:
    d = os.path.dirname(d)
  try:
    return f"; {shutil.disk_usage(d).free / 2**20:.0f} MiB free there"
  except OSError:
    return ""


def _prog(path: str) -> str:
  """``star_jax.main`` for ``.../star_jax/main.py``."""
  parts = os.path.normpath(path).split(os.sep)
  if len(parts) >= 2 and parts[-2] == "star_jax":
    return "star_jax." + os.path.splitext(parts[-1])[0]
  return os.path.basename(path)
