"""The run's plots: accuracy per iteration, overall and by difficulty (PNG files only)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only; no display on TPU VMs or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from matplotlib import ticker  # noqa: E402

from star_jax.runtime.distributed import is_primary  # noqa: E402
from star_jax.runtime.files import write_bytes_atomic  # noqa: E402
from star_jax.experiment.report import bucket_key, bucket_label  # noqa: E402


def _accuracy_axes(ax, title: str) -> None:
  """Iterations (whole numbers) against accuracy in percent."""
  ax.set_xlabel("STaR iteration")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(-2, 102)
  ax.set_title(title)
  ax.grid(alpha=0.3)


def plot_accuracy(metrics: list[dict], path: epath.PathLike, title: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  it = [m["iteration"] for m in metrics]
  ax.plot(it, [100 * m["eval_accuracy"] for m in metrics], marker="o", label="eval accuracy")
  _accuracy_axes(ax, title)
  ax.legend()
  _save(fig, path)


GRID_FROM = 13  # buckets from which accuracy by difficulty is drawn as a grid, not lines


def plot_by_difficulty(metrics: list[dict], key: str, path: epath.PathLike, title: str,
                       label: str = "{}") -> None:
  """One line per difficulty over the iterations, or from ``GRID_FROM`` difficulties on (a
  length curriculum's 1-22 digits) a grid of iterations x difficulties, each cell its %."""
  buckets = sorted({b for m in metrics for b in m.get(key, {})}, key=bucket_key)
  if len(buckets) >= GRID_FROM:
    return plot_grid(metrics, key, buckets, path, title, label)
  fig, ax = plt.subplots(figsize=(6, 4))
  for b in buckets:
    pts = [(m["iteration"], 100 * m[key][b]) for m in metrics if b in m.get(key, {})]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=bucket_label(label, b))
  ax.plot([m["iteration"] for m in metrics], [100 * m["eval_accuracy"] for m in metrics],
          color="black", linestyle="--", label="all")
  _accuracy_axes(ax, title)
  ax.legend(fontsize=8)
  _save(fig, path)


def plot_grid(metrics: list[dict], key: str, buckets: list, path: epath.PathLike, title: str,
              label: str = "{}") -> None:
  """Accuracy (%) by iteration (rows) and difficulty (columns); blank where not measured."""
  acc = np.full((len(metrics), len(buckets)), np.nan)
  for i, m in enumerate(metrics):
    for j, b in enumerate(buckets):
      if b in m.get(key, {}):
        acc[i, j] = 100 * m[key][b]
  fig, ax = plt.subplots(figsize=(max(6, 0.42 * len(buckets) + 1.5),
                                  max(2.5, 0.38 * len(metrics) + 1.2)))
  ax.imshow(acc, cmap="viridis", vmin=0, vmax=100, aspect="auto")
  for (i, j), v in np.ndenumerate(acc):
    if not np.isnan(v):
      ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
              color="black" if v > 60 else "white")
  ax.set_xticks(range(len(buckets)), [str(b) for b in buckets], fontsize=8)
  ax.set_xlabel(label.format("").strip() or "difficulty")
  ax.set_yticks(range(len(metrics)), [str(m["iteration"]) for m in metrics], fontsize=8)
  ax.set_ylabel("STaR iteration")
  ax.set_title(f"{title}: held-out accuracy (%)")
  _save(fig, path)


def plot_delta(metrics: list[dict], key: str, path: epath.PathLike, title: str,
               label: str = "{}") -> None:
  """RL-STaR's per-step delta by iteration, one line per bucket (``rl_star_by_*`` records)."""
  buckets = sorted({b for m in metrics for b in m.get(key, {}) if b != "all"}, key=bucket_key)
  fig, ax = plt.subplots(figsize=(6, 4))
  for b in buckets:
    pts = [(m["iteration"], m[key][b]["delta"]) for m in metrics if b in m.get(key, {})]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=bucket_label(label, b))
  ax.set_xlabel("STaR iteration")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel("per-step delta (RL-STaR)")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path)


def _save(fig, path: epath.PathLike) -> None:
  if not is_primary():
    plt.close(fig)
    return
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  write_bytes_atomic(path, png.getvalue())  # any epath: local or gs://
