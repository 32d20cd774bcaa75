"""Benchmark results: one JSON record per case, and their markdown tables.

Every benchmark prints one JSON object per case to stdout (logs go to stderr)
with at least these keys (``RECORD_KEYS``):

  benchmark    "decode" | "train" | "star_iteration" | "star_sampling" | "cold_start" |
               "star_vs_trl"
  case         what was measured, e.g. "batch=32"
  metric       what ``star_jax`` and ``transformers`` hold, e.g. "new_tokens_per_s"
  star_jax     star_jax's figure
  transformers the peer's figure (None where there is no peer)
  ratio        star_jax / transformers for throughputs, transformers / star_jax for seconds
               (how many times faster star_jax is; None without a peer)
  peer         the peer's description, or None
  machine      ``common.machine_info()``
  command      the exact command line
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Iterable, Sequence

from benchmarks import common

RECORD_KEYS = ("benchmark", "case", "metric", "star_jax", "transformers", "ratio", "peer",
               "machine", "command")


def record(benchmark: str, case: str, metric: str, ours: float | None, theirs: float | None,
           peer: str | None, machine: dict, cmd: str, **extra: Any) -> dict[str, Any]:
  """One result line; ``ratio`` is ours / theirs."""
  out = {"benchmark": benchmark, "case": case, "metric": metric, "star_jax": ours,
         "transformers": theirs, "ratio": common.ratio(ours, theirs), "peer": peer}
  out.update(extra)
  out["machine"] = machine
  out["command"] = cmd
  return out


def emit(rec: dict[str, Any], stream=None) -> None:
  stream = sys.stdout if stream is None else stream
  stream.write(json.dumps(rec) + "\n")
  stream.flush()


def read_records(lines: Iterable[str]) -> list[dict[str, Any]]:
  """The result objects among ``lines`` (markdown and other text are skipped)."""
  out = []
  for line in lines:
    line = line.strip()
    if line.startswith("{"):
      rec = json.loads(line)
      if isinstance(rec, dict) and "benchmark" in rec:
        out.append(rec)
  return out


def _fmt(x: Any, digits: int = 3) -> str:
  if x is None:
    return "–"
  if isinstance(x, bool):
    return "yes" if x else "no"
  if isinstance(x, int):
    return str(x)
  if isinstance(x, float):
    if not math.isfinite(x):
      return str(x)
    if x == 0:
      return "0"
    mag = abs(x)
    if mag >= 100:
      return f"{x:,.0f}"
    return f"{x:.{digits}g}"
  return str(x)


def _pct(x: float | None) -> str:
  return "–" if x is None else f"{100 * x:.1f}%"


def _get(d: dict, *path, default=None):
  for p in path:
    if not isinstance(d, dict) or p not in d:
      return default
    d = d[p]
  return d


def _giga(x):
  return None if x is None else x / 1e9


def _table(head: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def _decode_rows(recs):
  head = ["case", "star_jax tok/s", "transformers tok/s", "ratio", "star_jax compile s",
          "decode-only tok/s (star_jax / transformers)", "roofline tok/s",
          "star_jax of roofline (whole call / decode-only)", "token agreement"]
  rows = []
  for r in recs:
    roof = r.get("roofline") or {}
    rows.append([
        r["case"], _fmt(r["star_jax"]), _fmt(r["transformers"]), _fmt(r["ratio"]),
        _fmt(_get(r, "star_jax_detail", "compile_s")),
        f"{_fmt(_get(r, 'star_jax_detail', 'decode_only_tokens_per_s'))} / "
        f"{_fmt(_get(r, 'transformers_detail', 'decode_only_tokens_per_s'))}",
        _fmt(roof.get("tokens_per_s")),
        f"{_pct(roof.get('star_jax_fraction'))} / "
        f"{_pct(roof.get('star_jax_decode_only_fraction'))}" if roof else "–",
        _pct(r.get("token_agreement"))])
  return head, rows


def _train_rows(recs):
  head = ["case", "star_jax tok/s", "transformers tok/s", "ratio", "star_jax GFLOP/s",
          "transformers GFLOP/s", "matmul peak GFLOP/s", "star_jax of peak",
          "transformers of peak", "star_jax compile s", "first-step loss (star_jax / transformers)"]
  with_mfu = any(r.get("peak_flops") for r in recs)
  if with_mfu:
    head[7:7] = ["MFU (star_jax / transformers)"]
  rows = []
  for r in recs:
    sj, tf = r.get("star_jax_detail") or {}, r.get("transformers_detail") or {}
    loss = r.get("first_step_loss") or {}
    row = [
        r["case"], _fmt(r["star_jax"]), _fmt(r["transformers"]), _fmt(r["ratio"]),
        _fmt(_giga(sj.get("flops_per_s"))), _fmt(_giga(tf.get("flops_per_s"))),
        f"{_fmt(_giga(_get(r, 'matmul_peak_flops', 'best')))} "
        f"({_get(r, 'matmul_peak_flops', 'best_source', default='?')})",
        _pct(sj.get("fraction_of_peak")), _pct(tf.get("fraction_of_peak")),
        _fmt(sj.get("compile_s")),
        f"{_fmt(loss.get('star_jax'), 6)} / {_fmt(loss.get('transformers'), 6)}"]
    if with_mfu:
      row[7:7] = [f"{_pct(sj.get('mfu'))} / {_pct(tf.get('mfu'))}"]
    rows.append(row)
  return head, rows


STAR_PHASES = ("pretrain_seconds", "sample_seconds", "rationalize_seconds", "train_seconds",
               "eval_seconds")


def _star_rows(recs):
  head = ["config", "iteration", "pretrain s", "sampling s", "rationalization s", "training s",
          "evaluation s", "total s"]
  rows = []
  for r in recs:
    ph = r.get("phases") or {}
    rows.append([r.get("config", r["case"]), _fmt(r.get("iteration"))]
                + [_fmt(ph.get(k)) for k in STAR_PHASES] + [_fmt(r["star_jax"])])
  return head, rows


def _sampling_rows(recs):
  head = ["case", "star_jax q/s", "transformers q/s", "ratio", "star_jax compile s",
          "prefill tokens per call", "new tokens per call", "greedy text agreement", "answered"]
  rows = [[r["case"], _fmt(r["star_jax"]), _fmt(r["transformers"]), _fmt(r["ratio"]),
           _fmt(_get(r, "star_jax_detail", "compile_s")), _fmt(r.get("prefill_tokens_per_call")),
           _fmt(r.get("new_tokens_per_call")), _pct(r.get("greedy_text_agreement")),
           _pct(r.get("answered_share"))] for r in recs]
  return head, rows


def _cold_rows(recs):
  head = ["milestone", "seconds since the process started", "compiles on the way (s)"]
  def compile_s(r, w, s):
    return f"{w}: {s:g}" + (" (read from the cache)" if w in (r.get("read_from_cache") or ())
                            else "")
  rows = [[r["case"], _fmt(r["star_jax"]),
           ", ".join(compile_s(r, w, s) for w, s in r.get("compiles") or []) or "–"]
          for r in recs]
  return head, rows


def _vs_trl_rows(recs):
  head = ["workload", "phase", "star_jax s", "transformers + TRL s", "star_jax faster by",
          "kept (star_jax / peer)", "trained tokens", "first / last loss (star_jax; peer)"]
  rows = []
  for r in recs:
    same = r.get("same_work") or {}
    pair = lambda k: f"{_fmt(_get(same, k, 'star_jax'))} / {_fmt(_get(same, k, 'transformers'))}"
    total = r.get("phase") == "total"
    rows.append([r.get("workload", ""), r.get("phase", r["case"]), _fmt(r["star_jax"]),
                 _fmt(r["transformers"]), f"{_fmt(r['ratio'])}x" if r["ratio"] else "–",
                 pair("kept") if total else "", pair("train_tokens") if total else "",
                 (f"{_fmt(_get(same, 'train_first_loss', 'star_jax'))}, "
                  f"{_fmt(_get(same, 'train_loss', 'star_jax'))}; "
                  f"{_fmt(_get(same, 'train_first_loss', 'transformers'))}, "
                  f"{_fmt(_get(same, 'train_loss', 'transformers'))}") if total else ""])
  return head, rows


_TABLES = {"decode": _decode_rows, "train": _train_rows, "star_iteration": _star_rows,
           "star_sampling": _sampling_rows, "cold_start": _cold_rows,
           "star_vs_trl": _vs_trl_rows}
TITLES = {"decode": "Greedy decoding", "train": "Training step",
          "star_iteration": "STaR iteration wall time", "star_sampling": "STaR sampling workload",
          "cold_start": "Cold start",
          "star_vs_trl": "A whole STaR iteration against transformers + TRL"}


def markdown_table(recs: Sequence[dict[str, Any]]) -> str:
  """One table per benchmark found in ``recs`` (in order of first appearance)."""
  parts = []
  for bench in dict.fromkeys(r["benchmark"] for r in recs):
    group = [r for r in recs if r["benchmark"] == bench]
    maker = _TABLES.get(bench)
    if maker is None:
      head = ["case", "star_jax", "transformers", "ratio"]
      rows = [[r["case"], _fmt(r["star_jax"]), _fmt(r["transformers"]), _fmt(r["ratio"])]
              for r in group]
    else:
      head, rows = maker(group)
    parts.append(_table(head, rows))
  return "\n\n".join(parts)


def machine_line(m: dict[str, Any]) -> str:
  dev = m.get("jax_devices") or {}
  parts = [f"{m.get('cpu_model')} ({m.get('cores')} cores)",
           f"jax {m.get('jax')} / jaxlib {m.get('jaxlib')} on {dev.get('count')} "
           f"{dev.get('kind')} ({m.get('jax_backend')})"]
  if m.get("torch") and m.get("torch_device"):
    torch_part = f"torch {m['torch']} on {m.get('torch_device_name', m['torch_device'])}"
    if m.get("torch_threads") is not None and m.get("torch_device") == "cpu":
      torch_part += f" ({m['torch_threads']} threads)"
    parts.append(torch_part)
  if m.get("transformers") and m.get("torch_device"):
    parts.append(f"transformers {m['transformers']}")
  return "; ".join(parts)


def print_markdown(recs: Sequence[dict[str, Any]], stream=None) -> None:
  stream = sys.stdout if stream is None else stream
  if recs:
    stream.write("\n" + markdown_table(recs) + "\n")
    stream.flush()
