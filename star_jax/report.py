"""Run artifacts: atomic jsonl/json writes, the per-iteration log table and plots."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Iterable

import tqdm

from star_jax.distributed import is_primary

import matplotlib

matplotlib.use("Agg")  # files only; no display on TPU VMs or CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402


def progress(total: int, desc: str, unit: str) -> tqdm.tqdm:
  """A progress bar with rates; redrawn rarely when stderr is a log file, not a terminal."""
  tty = sys.stderr.isatty()
  return tqdm.tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=tty,
                   mininterval=0.2 if tty else 30.0, disable=not is_primary())


def write_atomic(path: str, text: str) -> None:
  """Writes via a temporary file and a rename: a reader never sees half a file.

  In a multi-host run only process 0 writes (every process computes the same text).
  """
  if not is_primary():
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_jsonl(path: str, records: Iterable[dict]) -> None:
  write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def append_metrics(path: str, record: dict) -> None:
  """Rewrites metrics.jsonl with one more line (atomic: never a partial line)."""
  rows = [r for r in read_jsonl(path) if r.get("iteration") != record["iteration"]]
  write_jsonl(path, sorted(rows + [record], key=lambda r: r["iteration"]))


def summary_line(m: dict[str, Any]) -> str:
  parts = [f"iter {m['iteration']}", f"eval acc {m['eval_accuracy']:.3f} (n={m['eval_n']})"]
  if m["iteration"] > 0:
    parts += [f"kept {m['kept']}/{m['train_questions']} "
              f"(gen {m['solved_by_generation']}, rat {m['solved_by_rationalization']})",
              f"steps {m['train_steps']}", f"loss {m['train_loss'] if m.get('train_loss') is not None else float('nan'):.3f}",
              f"time sample {m['sample_seconds']:.0f}s rationalize "
              f"{m['rationalize_seconds']:.0f}s train {m['train_seconds']:.0f}s "
              f"eval {m['eval_seconds']:.0f}s"]
  return " | ".join(parts)


def kept_line(kept_by: dict[str, dict[str, int]], name: str) -> str:
  """One line: per bucket, questions solved by generation + by rationalization / asked."""
  cells = [f"{b}: {r['generation']}+{r['rationalization']}/{r['questions']}"
           for b, r in kept_by.items()]
  return f"solved by {name} (generation+rationalization/questions): " + ", ".join(cells)


def difficulty_table(metrics: list[dict], key: str) -> str:
  """Iterations as rows, difficulty buckets as columns (accuracy in %)."""
  buckets = sorted({b for m in metrics for b in m.get(key, {})}, key=bucket_key)
  if not buckets:
    return ""
  head = "iter | " + " | ".join(f"{b:>5}" for b in buckets) + " |   all"
  lines = [head, "-" * len(head)]
  for m in metrics:
    cells = [f"{100 * m[key][b]:5.1f}" if b in m.get(key, {}) else "    -" for b in buckets]
    lines.append(f"{m['iteration']:>4} | " + " | ".join(cells) + f" | {100 * m['eval_accuracy']:5.1f}")
  return "\n".join(lines)


def bucket_key(b) -> tuple:
  """Sort key for difficulty buckets: integers in numeric order, then names."""
  b = str(b)
  return (0, int(b)) if b.lstrip("-").isdigit() else (1, b)


def _accuracy_axes(ax, title: str) -> None:
  """Iterations (whole numbers) against accuracy in percent."""
  ax.set_xlabel("STaR iteration")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(-2, 102)
  ax.set_title(title)
  ax.grid(alpha=0.3)


def plot_accuracy(metrics: list[dict], path: str, title: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  it = [m["iteration"] for m in metrics]
  ax.plot(it, [100 * m["eval_accuracy"] for m in metrics], marker="o", label="eval accuracy")
  _accuracy_axes(ax, title)
  ax.legend()
  _save(fig, path)


def plot_by_difficulty(metrics: list[dict], key: str, path: str, title: str,
                       label: str = "{} digits") -> None:
  buckets = sorted({b for m in metrics for b in m.get(key, {})}, key=bucket_key)
  fig, ax = plt.subplots(figsize=(6, 4))
  for b in buckets:
    pts = [(m["iteration"], 100 * m[key][b]) for m in metrics if b in m.get(key, {})]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label.format(b))
  ax.plot([m["iteration"] for m in metrics], [100 * m["eval_accuracy"] for m in metrics],
          color="black", linestyle="--", label="all")
  _accuracy_axes(ax, title)
  ax.legend(fontsize=8)
  _save(fig, path)


def _save(fig, path: str) -> None:
  if not is_primary():
    plt.close(fig)
    return
  tmp = path + ".tmp.png"
  fig.tight_layout()
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
