r"""Wall time of a STaR run, phase by phase: pretrain, sampling, rationalization, training, eval.

  python -m benchmarks.star_iteration --configs=configs/arithmetic.py:smoke [--markdown]
  python -m benchmarks.star_iteration \
      --configs=configs/arithmetic.py:smoke,configs/arithmetic.py

Runs ``star_jax.star.run(config, workdir)`` for each config in a fresh
temporary workdir and reads the ``*_seconds`` fields the run writes into
``WORKDIR/metrics.jsonl``. ``--finished`` reads runs that already finished
instead (their recorded config must match). Prints one JSON line per iteration per config
(see ``benchmarks.common``): ``star_jax`` is the iteration's seconds
(sum of its phases, compilation included where a phase compiles), ``phases``
the breakdown. There is no transformers counterpart: ``transformers``,
``ratio`` and ``peer`` are null.
"""

from __future__ import annotations

import importlib.util
import json
import logging as std_logging
import os
import shutil
import tempfile
import time
from typing import Any, Iterable, Sequence

from absl import app, flags, logging

from benchmarks import common, records

MODULE = "benchmarks.star_iteration"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Phases each metrics.jsonl line should time: iteration 0 is the base model (pretrain + eval).
ITERATION_PHASES = ("sample_seconds", "rationalize_seconds", "train_seconds", "eval_seconds")
BASE_PHASES = ("pretrain_seconds", "eval_seconds")


def load_config(spec: str):
  """``path/to/config.py[:variant]`` -> the config (paths relative to cwd or the repo root)."""
  path, _, variant = spec.partition(":")
  if not os.path.exists(path) and os.path.exists(os.path.join(REPO_ROOT, path)):
    path = os.path.join(REPO_ROOT, path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} not found")
  name = os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(f"_bench_config_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def read_metrics(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def phase_breakdown(metrics: Iterable[dict[str, Any]],
                    pretrain_seconds: float | None = None) -> list[dict[str, Any]]:
  """Per iteration: its phase seconds, the expected ones missing, and their total.

  Iteration 0 (the base model) has pretrain and eval; later ones sample,
  rationalize, train and eval. ``pretrain_seconds`` from outside the run is used
  when metrics.jsonl does not have it.
  """
  out = []
  for m in sorted(metrics, key=lambda m: m["iteration"]):
    n = int(m["iteration"])
    expected = BASE_PHASES if n == 0 else ITERATION_PHASES
    phases = {k: m.get(k) for k in expected}
    source = None
    if n == 0:
      if m.get("pretrain_seconds") is not None:
        source = "metrics.jsonl"
      elif pretrain_seconds is not None:
        phases["pretrain_seconds"], source = pretrain_seconds, "benchmark"
    missing = [k for k, v in phases.items() if v is None]
    known = [float(v) for v in phases.values() if v is not None]
    out.append({"iteration": n, "phases": phases, "missing": missing,
                "total_seconds": sum(known) if known else None, "pretrain_source": source,
                "eval_accuracy": m.get("eval_accuracy"), "train_steps": m.get("train_steps"),
                "kept": m.get("kept")})
  return out


def records_for_run(spec: str, metrics: list[dict[str, Any]], pretrain_seconds: float | None,
                    wall_seconds: float | None, machine: dict, cmd: str) -> list[dict[str, Any]]:
  rows = phase_breakdown(metrics, pretrain_seconds)
  accounted = sum(r["total_seconds"] or 0.0 for r in rows)
  recs = []
  for r in rows:
    recs.append(records.record(
        "star_iteration", f"{spec} iteration {r['iteration']}", "iteration_seconds",
        r["total_seconds"], None, None, machine, cmd, config=spec, iteration=r["iteration"],
        phases=r["phases"], missing_phases=r["missing"], pretrain_source=r["pretrain_source"],
        eval_accuracy=r["eval_accuracy"], train_steps=r["train_steps"], kept=r["kept"],
        run_wall_seconds=wall_seconds,
        # Build, tokenizer, checkpoint writes and plots: the run's time outside the phases.
        run_unaccounted_seconds=(wall_seconds - accounted) if wall_seconds is not None else None))
  return recs


def _finished_metrics(spec: str, config, run_dir: str) -> list[dict[str, Any]]:
  """Metrics of a finished run of ``config`` in ``run_dir``; a clear error otherwise."""
  from star_jax import config as config_lib
  from star_jax.experiment import workdir as wd
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir} holds no metrics.jsonl: run {spec} there first")
  wd.is_resume(config_lib.load(config), run_dir)  # the same config, or an error naming the keys
  metrics = read_metrics(path)
  want = list(range(config.star.iterations + 1))
  if sorted(m["iteration"] for m in metrics) != want:
    raise ValueError(f"{run_dir} has not finished {spec}: iterations "
                     f"{sorted(m['iteration'] for m in metrics)}, expected {want}")
  return metrics


def run(configs: Sequence[str] = ("configs/arithmetic.py:smoke",), workdir: str | None = None,
        keep_workdir: bool = False, finished: Sequence[str] = (), markdown: bool = False,
        cmd: str | None = None) -> list[dict[str, Any]]:
  """Runs each config in a fresh workdir (or reads ``finished[i]``, a finished run of
  ``configs[i]``) and prints one record per iteration."""
  import jax

  from star_jax import star
  if finished and len(finished) != len(configs):
    raise ValueError(f"got {len(finished)} finished workdirs for {len(configs)} configs")
  cmd = cmd if cmd is not None else common.command(MODULE)
  machine = common.machine_info(jax.devices())
  results = []
  for i, spec in enumerate(configs):
    config = load_config(spec)
    if finished:
      logging.info("reading the finished run of %s in %s", spec, finished[i])
      metrics, wall = _finished_metrics(spec, config, finished[i]), None
    else:
      base = workdir or tempfile.mkdtemp(prefix="star_bench_")
      run_dir = os.path.join(base, spec.replace("/", "_").replace(":", "_"))
      if os.path.exists(run_dir):
        shutil.rmtree(run_dir)  # a fresh run, never a resumed one
      logging.info("running %s in %s", spec, run_dir)
      t0 = time.perf_counter()
      star.run(config, run_dir)
      wall = time.perf_counter() - t0
      metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
      if not keep_workdir:
        shutil.rmtree(run_dir, ignore_errors=True)
        if workdir is None:
          shutil.rmtree(base, ignore_errors=True)
    for rec in records_for_run(spec, metrics, None, wall, machine, cmd):
      records.emit(rec)
      results.append(rec)
  if markdown:
    records.print_markdown(results)
  return results


def define_flags() -> None:
  flags.DEFINE_list("configs", ["configs/arithmetic.py:smoke"],
                    "config files[:variant] to run, e.g. configs/arithmetic.py:smoke,"
                    "configs/arithmetic.py")
  flags.DEFINE_string("workdir", None, "where the runs go (default: a temporary directory)")
  flags.DEFINE_bool("keep_workdir", False, "keep the runs' workdirs")
  flags.DEFINE_list("finished", [], "instead of running, read finished runs of --configs from "
                    "these workdirs (one per config, same order)")
  common.define_markdown_flag()


def main(argv):
  F = common.parsed_flags(argv)
  quiet = ("/orbax/", "/jax/", "/tensorflow_datasets/", "/etils/")  # as star_jax.main does
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or not any(q in r.pathname for q in quiet))
  run(configs=F.configs, workdir=F.workdir, keep_workdir=F.keep_workdir, finished=F.finished,
      markdown=F.markdown)


if __name__ == "__main__":
  define_flags()
  app.run(main)
