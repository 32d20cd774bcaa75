r"""Soak: a long run whose memory, compiled programs and open files must stay flat.

  python -m benchmarks.soak --iterations=30 --method=star --workdir=/tmp/soak_star
  python -m benchmarks.soak --iterations=30 --method=grpo --workdir=/tmp/soak_grpo
  python -m benchmarks.soak --finished=/tmp/soak_star  # the verdict of a finished run

Runs ``python -m star_jax.main --config=configs/arithmetic.py:smoke`` for ``--iterations``
(GRPO: ``--config.star.method=grpo``, 4 samples a question at temperature 1) in a process of
its own, as a user runs it, and reads the ``process_*`` fields every iteration writes into
``metrics.jsonl`` (star_jax/runtime/resources.py). Prints a table, one row an iteration,
then the verdict against the targets, and one JSON record per iteration and one for the
verdict (``benchmarks.records``). Exit status 1 when a target fails:

  memory    resident memory after the last iteration within ``--memory_tolerance`` (10%)
            of iteration ``--reference``'s (5: the programs are compiled and the caches warm
            by then); the slope from there to the last, MiB an iteration, is reported too
  programs  every program cache (and the process's count of XLA compiles) holds as many
            programs at the last iteration as at the reference: shapes are bucketed, so
            compiling stops once a run has met its buckets
  files     open file descriptors at the last iteration no more than the most held up to
            the reference
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from absl import app, flags, logging

from benchmarks import common, records

MODULE = "benchmarks.soak"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {
    "star": [],
    # GRPO needs groups that can differ: 4 samples a question, at temperature 1
    "grpo": ["--config.star.method=grpo", "--config.star.samples_per_question=4",
             "--config.star.temperature=1.0"],
}


def loop_command(iterations: int, method: str, workdir: str,
                 config: str = "configs/arithmetic.py:smoke",
                 overrides: Sequence[str] = ()) -> list[str]:
  """The ``star_jax.main`` command line the soak runs."""
  if method not in METHODS:
    raise ValueError(f"--method must be one of {sorted(METHODS)}, got {method!r}")
  return ([sys.executable, "-m", "star_jax.main", f"--config={config}",
           f"--workdir={workdir}", f"--config.star.iterations={iterations}"]
          + METHODS[method] + list(overrides))


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return sorted(rows, key=lambda m: m["iteration"])


def verdict(metrics: Sequence[dict[str, Any]], reference: int = 5,
            memory_tolerance: float = 0.10) -> dict[str, Any]:
  """The figures the targets are judged on and ``failures``, one line per target missed."""
  rows = [m for m in metrics if m.get("process_rss_mib") is not None]
  if not rows:
    raise ValueError("metrics.jsonl holds no process_* fields: a run of an older star_jax, "
                     "or a system without /proc")
  by_n = {m["iteration"]: m for m in rows}
  if reference not in by_n:
    raise ValueError(f"no iteration {reference} to compare with: run more iterations than "
                     f"--reference={reference} (the run has {sorted(by_n)})")
  ref, last = by_n[reference], rows[-1]
  if last["iteration"] <= reference:
    raise ValueError(f"the last iteration is {last['iteration']}: run more iterations than "
                     f"--reference={reference}")
  after = [m for m in rows if m["iteration"] >= reference]
  change = last["process_rss_mib"] / ref["process_rss_mib"] - 1
  ref_programs, last_programs = ref["process_compiled_programs"], last[
      "process_compiled_programs"]
  growing = {k: [ref_programs.get(k, 0), v] for k, v in last_programs.items()
             if v > ref_programs.get(k, 0)}
  files = [m.get("process_open_files") or 0 for m in rows]
  files_before = max(f for m, f in zip(rows, files) if m["iteration"] <= reference)
  out = {
      "reference": reference, "last": last["iteration"],
      "rss_mib": [ref["process_rss_mib"], last["process_rss_mib"]],
      "rss_change": change,
      "rss_slope_mib_per_iteration": _slope([m["iteration"] for m in after],
                                            [m["process_rss_mib"] for m in after]),
      "peak_rss_mib": last.get("process_peak_rss_mib"),
      "compiled_programs": {k: [ref_programs.get(k, 0), v] for k, v in last_programs.items()},
      "open_files": [files_before, files[-1], max(files)],
      "threads": [ref.get("process_threads"), last.get("process_threads")],
      "failures": [],
  }
  if abs(change) > memory_tolerance:
    out["failures"].append(
        f"memory: {ref['process_rss_mib']:.0f} MiB at iteration {reference}, "
        f"{last['process_rss_mib']:.0f} MiB at {last['iteration']} ({100 * change:+.1f}%, "
        f"past {100 * memory_tolerance:.0f}%)")
  if growing:
    out["failures"].append(
        f"programs: still compiling after iteration {reference}: " + ", ".join(
            f"{k} {a} -> {b}" for k, (a, b) in sorted(growing.items())))
  if files[-1] > files_before:
    out["failures"].append(
        f"files: {files[-1]} open at iteration {last['iteration']}, at most "
        f"{files_before} up to iteration {reference}")
  return out


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
  """The least-squares slope of ys over xs (0 for a single point)."""
  n = len(xs)
  mx, my = sum(xs) / n, sum(ys) / n
  var = sum((x - mx) ** 2 for x in xs)
  return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def table(metrics: Sequence[dict[str, Any]]) -> str:
  """One markdown row an iteration: memory, files, threads and each cache's programs."""
  caches = sorted({k for m in metrics for k in m.get("process_compiled_programs") or {}})
  head = ["iteration", "RSS MiB", "peak RSS MiB", "open files", "threads"] + [
      f"programs: {c}" for c in caches] + ["seconds"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for m in metrics:
    programs = m.get("process_compiled_programs") or {}
    cells = [m["iteration"], m.get("process_rss_mib"), m.get("process_peak_rss_mib"),
             m.get("process_open_files"), m.get("process_threads")] + [
        programs.get(c) for c in caches] + [m.get("iteration_seconds")]
    lines.append("| " + " | ".join("–" if c is None else f"{c:.1f}" if isinstance(c, float)
                                   else str(c) for c in cells) + " |")
  return "\n".join(lines)


def verdict_text(v: dict[str, Any], method: str) -> str:
  programs = ", ".join(f"{k} {a}" if a == b else f"{k} {a} -> {b}"
                       for k, (a, b) in sorted(v["compiled_programs"].items()))
  lines = [
      f"{method}: RSS {v['rss_mib'][0]:.0f} MiB at iteration {v['reference']}, "
      f"{v['rss_mib'][1]:.0f} MiB at {v['last']} ({100 * v['rss_change']:+.1f}%; "
      f"{v['rss_slope_mib_per_iteration']:+.2f} MiB an iteration)",
      f"{method}: compiled programs at iteration {v['reference']} -> {v['last']}: {programs}",
      f"{method}: open files {v['open_files'][0]} (most up to iteration {v['reference']}) -> "
      f"{v['open_files'][1]} at {v['last']}; threads {v['threads'][0]} -> {v['threads'][1]}"]
  lines += [f"{method}: FAIL {f}" for f in v["failures"]] or [f"{method}: all targets met"]
  return "\n".join(lines)


def run(iterations: int = 30, method: str = "star", workdir: str | None = None,
        config: str = "configs/arithmetic.py:smoke", overrides: Sequence[str] = (),
        finished: str = "", reference: int = 5, memory_tolerance: float = 0.10,
        env: dict | None = None, cmd: str | None = None) -> tuple[list[dict], dict]:
  """Runs the loop (or reads ``finished``, a run's workdir), prints the table, the verdict and
  the records; returns (records, verdict)."""
  cmd = cmd if cmd is not None else common.command(MODULE)
  if finished:
    run_dir = finished
  else:
    run_dir = workdir or tempfile.mkdtemp(prefix=f"soak_{method}_")
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):  # a resume: other processes'
      raise ValueError(f"{run_dir} holds a run already: soak in a new workdir, or judge that "
                       f"run with --finished={run_dir}")
    argv = loop_command(iterations, method, run_dir, config, overrides)
    logging.info("running %s", " ".join(argv[1:]))
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env)
    if proc.returncode:
      raise RuntimeError(f"the run in {run_dir} ended with exit status {proc.returncode}")
  metrics = read_metrics(run_dir)
  v = verdict(metrics, reference, memory_tolerance)
  print(table(metrics))
  print(verdict_text(v, method))
  machine = common.machine_info()
  recs = []
  for m in metrics:
    recs.append(records.record(
        "soak", f"{method} iteration {m['iteration']}", "process_rss_mib",
        m.get("process_rss_mib"), None, None, machine, cmd, method=method, workdir=run_dir,
        iteration=m["iteration"], **{k: m.get(k) for k in (
            "process_peak_rss_mib", "process_open_files", "process_threads",
            "process_compiled_programs", "iteration_seconds")}))
  recs.append(records.record("soak", f"{method} verdict", "rss_change", v["rss_change"], None,
                             None, machine, cmd, method=method, workdir=run_dir,
                             iterations=len(metrics) - 1, verdict=v))
  for rec in recs:
    records.emit(rec)
  return recs, v


def define_flags() -> None:
  flags.DEFINE_integer("iterations", 30, "STaR iterations (GRPO: blocks of policy steps)")
  flags.DEFINE_enum("method", "star", sorted(METHODS), "the loop to soak")
  flags.DEFINE_string("workdir", None, "the run's workdir (default: a temporary directory)")
  flags.DEFINE_string("config", "configs/arithmetic.py:smoke", "the config[:variant] run")
  flags.DEFINE_multi_string("override", [], "more --config.KEY=VALUE for the run")
  flags.DEFINE_string("finished", "", "instead of running, judge the run in this workdir")
  flags.DEFINE_integer("reference", 5, "the iteration the last one is compared with")
  flags.DEFINE_float("memory_tolerance", 0.10, "how far memory may move from the reference's")


def main(argv):
  F = common.parsed_flags(argv)
  _, v = run(iterations=F.iterations, method=F.method, workdir=F.workdir, config=F.config,
             overrides=F.override, finished=F.finished, reference=F.reference,
             memory_tolerance=F.memory_tolerance)
  if v["failures"]:
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
