"""Compiling jitted functions ahead of their first call: timed, logged when long, and checked
against the device's memory before anything runs.

A 30-layer model can take a while to compile on a small machine, and a run that goes
quiet for a minute looks stuck: ``compiled`` logs a line when compiling took more than
``LONG_COMPILE_S``. XLA reports what the compiled program needs (arguments, outputs and
temporaries per device); a program that cannot fit fails here with those numbers, before
it runs, instead of with an allocator trace halfway through.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import time

import jax

LONG_COMPILE_S = 10.0
CACHE_MIN_COMPILE_S = 1.0  # programs that compile faster are not worth a file
_GIB = 2 ** 30
COMPILED: list[tuple[str, float]] = []  # (what, seconds) of every compile, in order
CACHE_HITS: list[str] = []  # what ``compiled`` read from the persistent compilation cache


_HITS = [0]  # programs JAX read from its persistent cache, all of this process's


def _count_hits(event: str, **kwargs) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    _HITS[0] += 1


jax.monitoring.register_event_listener(_count_hits)


_TARGET = contextvars.ContextVar("star_jax_compile_target", default=None)


def target_platform() -> str:
  """The platform programs are traced for: this process's backend, or the one a plan compiles
  for (``compiling_for``), so code paths chosen per platform are the target's."""
  return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str):
  """Trace (and so lower) for ``platform`` ("tpu", "gpu", "cpu") inside the block: a TPU plan
  made on a CPU host compiles the attention path a TPU would run, not XLA:CPU's."""
  token = _TARGET.set(platform)
  try:
    yield
  finally:
    _TARGET.reset(token)


def device_memory_bytes(device=None) -> int | None:
  """What one of this process's devices can hold: the accelerator's limit, or the host's
  available memory (CPU devices have no limit of their own)."""
  device = device or jax.local_devices()[0]  # another process's device has no stats here
  try:
    stats = device.memory_stats()
  except (AttributeError, jax.errors.JaxRuntimeError):
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return _host_available_bytes()


def _host_available_bytes() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError):
    return None


def memory_need(exe) -> dict[str, int]:
  """Bytes per device of a compiled program: arguments, outputs, temporaries and their sum
  (donated arguments that the outputs reuse count once)."""
  m = exe.memory_analysis()
  if m is None:
    return {}
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes}
  out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  return out


# The TPU compiler refuses a program that does not fit the chip's HBM (XLA:CPU compiles any
# size), in one of two forms (libtpu 0.0.42.1):
#   "Ran out of memory in memory space hbm. Used 30.77G of 30.75G hbm. Exceeded hbm capacity
#    by 24.40M."  (everything the program holds)
#   "Ran out of memory on HBM, the total memory required for HLO temporaries (108.29G) exceeds
#    available HBM (15.75G)."  (its temporaries alone)
_NUMBER = r"([\d.]+)([KMGT]?)"
_HBM_REFUSALS = (
    (re.compile(rf"Ran out of memory in memory space hbm\. Used {_NUMBER} of {_NUMBER} hbm"),
     "total"),
    (re.compile(rf"required for HLO temporaries \({_NUMBER}\) exceeds available HBM "
                rf"\({_NUMBER}\)"), "temporaries"))
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def out_of_device_memory(error: BaseException) -> tuple[int, int, str] | None:
  """(bytes, bytes the device offers, what the bytes are: "total" or "temporaries") when
  ``error`` is the compiler refusing a program for want of device memory; None otherwise."""
  for pattern, kind in _HBM_REFUSALS:
    m = pattern.search(str(error))
    if m is not None:
      return (int(float(m.group(1)) * _UNITS[m.group(2)]),
              int(float(m.group(3)) * _UNITS[m.group(4)]), kind)
  return None


_PROGRAM_CACHES: dict[str, dict] = {}
_XLA_PROGRAMS = [0]  # programs XLA compiled (or read from the persistent cache), all jits'


def _count_programs(event: str, duration: float, **kwargs) -> None:
  if event == "/jax/core/compile/backend_compile_duration":
    _XLA_PROGRAMS[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_programs)


def program_cache(name: str) -> dict:
  """A module's own cache of jitted or compiled programs (keyed by shapes, mesh, config),
  registered under ``name`` so that ``forget_programs`` clears it and ``compiled_programs``
  counts it (a module imported again replaces its cache)."""
  cache = _PROGRAM_CACHES[name] = {}
  return cache


def compiled_programs() -> dict[str, int]:
  """How many compiled programs each program cache holds, and under "xla" how many programs
  this process has compiled in all (any jitted function's, in a cache or not): numbers that
  stop growing once a run has met its shapes. A cache keyed on an unbucketed length grows
  every iteration."""
  out = {name: sum(_programs_in(fn) for fn in cache.values())
         for name, cache in sorted(_PROGRAM_CACHES.items())}
  out["xla"] = _XLA_PROGRAMS[0]
  return out


def _programs_in(fn) -> int:
  if isinstance(fn, CompileOnFirstCall):
    return int(fn._exe is not None)
  size = getattr(fn, "_cache_size", None)  # a jax.jit function: one program per signature
  return size() if callable(size) else 1


def forget_programs() -> None:
  """Forgets every program this process compiled, as if it were a new process: the next
  call of each traces and compiles again (or reads it from the persistent cache)."""
  for cache in _PROGRAM_CACHES.values():
    cache.clear()
  jax.clear_caches()


def use_cache(directory: str) -> None:
  """Keeps every program that took ``CACHE_MIN_COMPILE_S`` or more to compile in
  ``directory`` (JAX's persistent compilation cache: a local path or gs://), and reads it
  back instead of compiling in the next process that asks for the same program on the same
  devices and versions. "" turns it off. A process that already used another directory
  switches to this one."""
  from jax.experimental.compilation_cache import compilation_cache
  current = jax.config.jax_compilation_cache_dir or ""
  if directory == current:
    return
  compilation_cache.reset_cache()  # the cache is opened once, on first use: reopen it here
  jax.config.update("jax_compilation_cache_dir", directory or None)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the user's, if set
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
  if directory:
    logging.info("compiled programs are kept in %s", directory)


@contextlib.contextmanager
def cache_in(directory: str):
  """``use_cache(directory)`` inside the block; the directory used before, after it."""
  before = jax.config.jax_compilation_cache_dir or ""
  use_cache(directory)
  try:
    yield
  finally:
    use_cache(before)


def compiled(jitted, args, what: str, hint: str = ""):
  """The compiled executable of ``jitted`` for ``args``; raises MemoryError when it cannot fit
  (found by the compiler itself, or from its memory analysis)."""
  t0, hits = time.perf_counter(), _HITS[0]
  try:
    exe = jitted.lower(*args).compile()
  except Exception as e:  # jax's runtime error; only the device-memory refusal is handled
    refusal = out_of_device_memory(e)
    if refusal is None:
      raise
    need = f"{refusal[0] / _GIB:.2f} GiB" + (" of temporaries" if refusal[2] == "temporaries"
                                              else "")
    raise MemoryError(f"{what} needs {need} per device but the device has "
                      f"{refusal[1] / _GIB:.2f} GiB (the compiler's figures)"
                      + (f"; {hint}" if hint else "")) from None
  seconds = time.perf_counter() - t0
  COMPILED.append((what, seconds))
  if _HITS[0] > hits:
    CACHE_HITS.append(what)
    logging.info("read %s from the compilation cache in %.1f s", what, seconds)
  else:
    level = logging.INFO if seconds > LONG_COMPILE_S else logging.DEBUG
    logging.log(level, "compiled %s in %.1f s", what, seconds)
  need, have = memory_need(exe), device_memory_bytes()
  if need and have and need["total"] > have:
    parts = ", ".join(f"{k} {v / _GIB:.2f}" for k, v in need.items() if k != "total")
    raise MemoryError(f"{what} needs {need['total'] / _GIB:.1f} GiB per device ({parts} GiB) "
                      f"but the device has {have / _GIB:.1f} GiB available" +
                      (f"; {hint}" if hint else ""))
  return exe


class CompileOnFirstCall:
  """A jitted function of fixed shapes, compiled (timed, memory-checked) on its first call."""

  def __init__(self, jitted, what: str, hint: str = ""):
    self._jitted, self._what, self._hint, self._exe = jitted, what, hint, None

  def __call__(self, *args):
    if self._exe is None:
      self._exe = compiled(self._jitted, args, self._what, self._hint)
    return self._exe(*args)
