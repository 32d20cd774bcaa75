"""Shared pieces of the benchmarks: machine description, devices, timing, measured peaks and
the command line. Result records and their markdown tables: ``records``."""

from __future__ import annotations

import gc
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from absl import app, flags, logging

# --------------------------------------------------------------------------------------------
# Machine


def cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def cores() -> int | None:
  """CPU cores this process may run on (the affinity mask, not the machine's total)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count()


def version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def command(module: str, argv: Sequence[str] | None = None) -> str:
  """The command line that reproduces this run: ``python -m MODULE ARGS``."""
  argv = sys.argv[1:] if argv is None else list(argv)
  return " ".join(["python", "-m", module] + argv)


def machine_info(devices=None, torch_device: str | None = None) -> dict[str, Any]:
  """CPU, library versions and the accelerator the run used."""
  import jax
  devices = list(devices) if devices is not None else jax.devices()
  info = {
      "cpu_model": cpu_model(), "cores": cores(), "python": platform.python_version(),
      "numpy": np.__version__, "jax": jax.__version__, "jaxlib": version("jaxlib"),
      "flax": version("flax"), "torch": version("torch"),
      "transformers": version("transformers"),
      "jax_backend": jax.default_backend(),
      "jax_devices": {"count": len(devices), "platform": devices[0].platform,
                      "kind": devices[0].device_kind},
      "jax_matmul_precision": jax.config.jax_default_matmul_precision,
  }
  if torch_device is not None:
    import torch
    info["torch_device"] = torch_device
    info["torch_threads"] = torch.get_num_threads()
    info["torch_matmul_precision"] = torch.get_float32_matmul_precision()
    if torch_device.startswith("cuda"):
      info["torch_device_name"] = torch.cuda.get_device_name(torch_device)
  return info


# --------------------------------------------------------------------------------------------
# Devices


def select_devices(device: str = "auto", mesh_shape: Sequence[int] = (1, 1, 1)):
  """The jax devices of the run and the torch device of its peer.

  ``device`` is auto (jax's default backend), cpu or gpu. The default mesh is
  one device, the peer's setting: transformers runs on one device too.
  """
  import jax
  if device == "auto":
    devices = jax.devices()
  elif device in ("cpu", "gpu", "cuda", "tpu"):
    devices = jax.devices("gpu" if device == "cuda" else device)
  else:
    raise ValueError(f"--device must be auto, cpu, gpu or tpu, got {device!r}")
  shape = [int(s) for s in mesh_shape]
  if -1 not in shape:
    n = math.prod(shape)
    if n > len(devices):
      raise ValueError(f"mesh {shape} needs {n} devices, have {len(devices)}")
    devices = devices[:n]
  torch_device = "cuda" if devices[0].platform == "gpu" else "cpu"
  return devices, torch_device


def share_gpu_memory() -> None:
  """Lets jax and torch share one GPU: jax would otherwise take 75% of it on first use.

  Must run before jax initializes its backends; an explicit setting is kept.
  """
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def setup_torch(torch_device: str) -> None:
  """Threads = cores on CPU (the same cores jax's CPU backend uses)."""
  import torch
  if torch_device == "cpu":
    torch.set_num_threads(cores() or 1)
  elif not torch.cuda.is_available():
    raise RuntimeError("jax runs on a GPU but torch has no CUDA: install a CUDA torch build to "
                       "compare on the same device")


def set_matmul_precision(precision: str) -> None:
  """float32 matmuls in both frameworks: ``highest`` (true float32) or ``high`` (TF32).

  The defaults differ on GPUs (jax lets XLA use TF32, torch does not), so the
  benchmarks set both to the same precision; on CPUs both are float32 either way.
  """
  import jax
  if precision not in ("highest", "high"):
    raise ValueError(f"matmul precision must be highest or high, got {precision!r}")
  jax.config.update("jax_default_matmul_precision",
                    "highest" if precision == "highest" else "tensorfloat32")
  try:
    import torch
  except ImportError:
    return
  torch.set_float32_matmul_precision(precision)


def torch_sync(torch_device: str) -> None:
  if torch_device.startswith("cuda"):
    import torch
    torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------
# Timing


class Timing:
  """A first (compiling / warm-up) call and the timed calls after it, in seconds."""

  def __init__(self, first: float, times: Sequence[float]):
    if not times:
      raise ValueError("need at least one timed call")
    self.first, self.times = float(first), [float(t) for t in times]

  @property
  def best(self) -> float:
    return min(self.times)

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def compile(self) -> float:
    """First call minus a steady one: compilation (jax) or warm-up (torch)."""
    return max(self.first - self.median, 0.0)

  def as_dict(self) -> dict[str, Any]:
    return {"first_call_s": self.first, "compile_s": self.compile, "best_s": self.best,
            "median_s": self.median, "times_s": self.times}


def time_calls(fn: Callable[[], Any], iters: int, label: str = "", log=None) -> Timing:
  """Calls ``fn`` (which must wait for its result) once untimed-for-steady, then ``iters`` times."""
  def once():
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
  first = once()
  if log:
    log("%s: first call %.3f s", label, first)
  times = []
  for i in range(max(iters, 1)):
    times.append(once())
    if log:
      log("%s: call %d %.3f s", label, i, times[-1])
  return Timing(first, times)


def ratio(ours: float | None, theirs: float | None) -> float | None:
  if ours is None or not theirs:
    return None
  return ours / theirs


def free_memory() -> None:
  gc.collect()
  try:
    import torch
    if torch.cuda.is_available():
      torch.cuda.empty_cache()
  except ImportError:
    pass


# --------------------------------------------------------------------------------------------
# Machine peaks, measured in the same run


def _best(fn: Callable[[], Any], repeats: int) -> float:
  fn()  # warm-up (page faults, compilation)
  best = math.inf
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def memory_bandwidth(nbytes: int, device, torch_device: str | None = None,
                     repeats: int = 5) -> dict[str, Any]:
  """Copy bandwidth (bytes read + written per second, best of ``repeats``).

  On a CPU: a numpy copy (one thread) and, when torch is there, a torch copy
  (threaded); ``bytes_per_s`` is the larger. On an accelerator: a jitted jax
  copy on the device.
  """
  import jax
  n = max(nbytes // 4, 1)
  out: dict[str, Any] = {"array_bytes": 4 * n, "repeats": repeats}
  if device.platform == "cpu":
    src = np.ones(n, np.float32)
    dst = np.zeros_like(src)
    out["numpy"] = 2 * src.nbytes / _best(lambda: np.copyto(dst, src), repeats)
    del src, dst
    if torch_device is not None:
      import torch
      ts, td = torch.ones(n), torch.zeros(n)
      out["torch"] = 2 * ts.nbytes / _best(lambda: td.copy_(ts), repeats)
      del ts, td
    candidates = {k: out[k] for k in ("numpy", "torch") if k in out}
  else:
    x = jax.device_put(np.ones(n, np.float32), device)
    copy = jax.jit(lambda a: a + 1.0)
    out["jax"] = 2 * 4 * n / _best(lambda: copy(x).block_until_ready(), repeats)
    del x
    candidates = {"jax": out["jax"]}
  out["source"] = max(candidates, key=candidates.get)
  out["bytes_per_s"] = candidates[out["source"]]
  free_memory()
  return out


def matmul_peak(n: int, device, torch_device: str | None = None,
                repeats: int = 5) -> dict[str, Any]:
  """float32 ``n x n @ n x n`` FLOP/s (2 n^3 / best time) in jax, numpy and torch."""
  import jax
  import jax.numpy as jnp
  flops = 2.0 * n ** 3
  rng = np.random.default_rng(0)
  a_host = rng.standard_normal((n, n), np.float32)
  b_host = rng.standard_normal((n, n), np.float32)
  out: dict[str, Any] = {"n": n, "repeats": repeats}
  a, b = jax.device_put(a_host, device), jax.device_put(b_host, device)
  mm = jax.jit(jnp.matmul)
  out["jax"] = flops / _best(lambda: mm(a, b).block_until_ready(), repeats)
  del a, b
  if device.platform == "cpu":
    out["numpy"] = flops / _best(lambda: a_host @ b_host, repeats)
  if torch_device is not None:
    import torch
    ta, tb = torch.from_numpy(a_host).to(torch_device), torch.from_numpy(b_host).to(torch_device)

    def tmm():
      torch.mm(ta, tb)
      torch_sync(torch_device)
    out["torch"] = flops / _best(tmm, repeats)
    del ta, tb
  candidates = {k: out[k] for k in ("jax", "numpy", "torch") if k in out}
  out["best_source"] = max(candidates, key=candidates.get)
  out["best"] = candidates[out["best_source"]]
  free_memory()
  return out


def parse_int_list(values: Iterable[Any]) -> list[int]:
  out = [int(v) for v in values]
  if not out or any(v < 1 for v in out):
    raise ValueError(f"expected positive integers, got {list(values)}")
  return out


# --------------------------------------------------------------------------------------------
# Command line


def setup_run(device: str, mesh_shape: Sequence[Any], matmul_precision: str, peers: bool):
  """Devices, the star_jax mesh and the torch device of a side-by-side benchmark."""
  from star_jax.engine import sharding
  if peers:
    share_gpu_memory()
  set_matmul_precision(matmul_precision)
  devices, torch_device = select_devices(device, mesh_shape)
  if peers:
    setup_torch(torch_device)
  mesh = sharding.make_mesh([int(s) for s in mesh_shape], devices=devices)
  return devices, mesh, torch_device


def define_peer_flags(default_checkpoint: str) -> None:
  """Flags of the benchmarks that run a checkpoint in star_jax and in transformers."""
  flags.DEFINE_string("checkpoint", default_checkpoint,
                      "known checkpoint name, Hugging Face directory or .gguf file")
  flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu", "tpu"],
                    "jax platform (torch follows: cuda for gpu, else cpu)")
  flags.DEFINE_list("mesh", ["1", "1", "1"], "star_jax mesh (data, fsdp, tensor)")
  flags.DEFINE_enum("matmul_precision", "highest", ["highest", "high"],
                    "float32 matmul precision in both frameworks (high: TF32 on GPUs)")
  flags.DEFINE_bool("peers", True, "also run transformers (False: star_jax only)")


def define_markdown_flag() -> None:
  flags.DEFINE_bool("markdown", False, "also print a markdown table after the JSON lines")


def parsed_flags(argv: Sequence[str]) -> flags.FlagValues:
  """The parsed flags of a benchmark's ``main``: no positional arguments; INFO logs by default."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  F = flags.FLAGS
  if not F["verbosity"].present:
    logging.set_verbosity(logging.INFO)
  return F
