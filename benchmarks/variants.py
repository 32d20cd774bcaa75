"""The STaR-family comparison of docs/variants.md from finished runs' metrics.jsonl: markdown
tables (held-out accuracy per iteration, greedy and majority@k; keep rates and δ) and a plot.

  python -m benchmarks.variants --runs star=runs/v_star rest_em=runs/v_rest_em ... \
      --plot docs/img/variants.png

A method may name several workdirs, one per data seed (``star=runs/v_star,runs/v1_star``): the
per-iteration tables and the plot show the first, and a last table gives every seed's final
accuracy and their mean, at the last iteration every run reached.
"""

from __future__ import annotations

import argparse
import json
import os


def read(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def parse_runs(specs: list[str]) -> dict[str, list[list[dict]]]:
  """``name=WORKDIR[,WORKDIR...]`` arguments: each name's runs' metrics, in order."""
  seeds = {}
  for item in specs:
    name, _, workdirs = item.partition("=")
    seeds[name] = [read(w) for w in workdirs.split(",")]
  return seeds


def wall_minutes(metrics: list[dict]) -> float:
  """Minutes of the iterations after M_0 (sampling, rationalizing, training, evaluating)."""
  keys = ("sample_seconds", "rationalize_seconds", "train_seconds", "eval_seconds",
          "bstar_probe_seconds")
  return sum(m.get(k, 0.0) for m in metrics[1:] for k in keys) / 60


def pct(x) -> str:
  return "—" if x is None else f"{100 * x:.1f}"


def accuracy_table(runs: dict[str, list[dict]]) -> str:
  """Rows: methods; columns: iterations, greedy (majority@k) held-out accuracy in %."""
  n = max(len(m) for m in runs.values())
  head = "| method | " + " | ".join(f"iter {i}" for i in range(n)) + " | minutes |"
  rows = [head, "| --- " * (n + 2) + "|"]
  for name, ms in runs.items():
    cells = [f"{pct(m['eval_accuracy'])} ({pct(m.get('eval_majority_accuracy'))})" for m in ms]
    cells += [""] * (n - len(ms))
    rows.append(f"| {name} | " + " | ".join(cells) + f" | {wall_minutes(ms):.0f} |")
  return "\n".join(rows)


def keep_table(runs: dict[str, list[dict]], digits: str = "5") -> str:
  """Per method and iteration: pass@1 of the train samples, kept, distinct paths a question,
  wrong-step share of the kept, 5-digit δ, and B-STaR's temperature."""
  rows = ["| method | iter | train pass@1 | solved (gen + rat) / asked | 4d / 5d solved | kept | "
          f"paths / question | wrong-step share | δ {digits}d | B-STaR T (score) |",
          "| --- " * 10 + "|"]
  for name, ms in runs.items():
    for m in ms[1:]:
      delta = m.get("rl_star_by_digits", {}).get(digits, {}).get("delta")
      t = (f"{m['bstar_temperature']:g} ({m['bstar_score']:.3f})"
           if "bstar_temperature" in m else "")
      by = m.get("kept_by_digits", {})
      long = " / ".join(f"{by[d]['generation'] + by[d]['rationalization']}/{by[d]['questions']}"
                        if d in by else "—" for d in ("4", "5"))
      rows.append(f"| {name} | {m['iteration']} | {pct(m.get('train_pass_at_1'))} | "
                  f"{m['solved_by_generation']} + {m['solved_by_rationalization']} / "
                  f"{m['train_questions']} | {long} | "
                  f"{m['kept']} | {m.get('distinct_paths_per_question', 0):.2f} | "
                  f"{pct(m.get('kept_wrong_step_share'))} | "
                  f"{'—' if delta is None else f'{delta:.3f}'} | {t} |")
  return "\n".join(rows)


def final_table(seeds: dict[str, list[list[dict]]]) -> str:
  """Per method: greedy (majority@k) held-out accuracy of each seed's run and the mean, at the
  last iteration all runs reached."""
  last = min(len(ms) for runs in seeds.values() for ms in runs) - 1
  n = max(len(runs) for runs in seeds.values())
  rows = [f"| method | " + " | ".join(f"seed run {i + 1}" for i in range(n))
          + f" | mean (iter {last}) |", "| --- " * (n + 2) + "|"]
  for name, runs in seeds.items():
    at = [ms[last] for ms in runs]
    cells = [f"{pct(m['eval_accuracy'])} ({pct(m.get('eval_majority_accuracy'))})" for m in at]
    cells += [""] * (n - len(at))
    greedy = sum(m["eval_accuracy"] for m in at) / len(at)
    votes = [m.get("eval_majority_accuracy") for m in at]
    vote = None if None in votes else sum(votes) / len(votes)
    rows.append(f"| {name} | " + " | ".join(cells) + f" | {pct(greedy)} ({pct(vote)}) |")
  return "\n".join(rows)


def plot(runs: dict[str, list[dict]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, key, title in ((axes[0], "eval_accuracy", "greedy"),
                         (axes[1], "eval_majority_accuracy", "majority vote of k samples")):
    for name, ms in runs.items():
      pts = [(m["iteration"], 100 * m[key]) for m in ms if key in m]
      ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xticks(range(max(len(ms) for ms in runs.values())))
    ax.set_title(f"held-out accuracy, {title}")
    ax.set_xlabel("iteration (150 steps x 32 rows each)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("%")
  axes[0].legend(loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--runs", nargs="+", required=True,
                 help="name=WORKDIR[,WORKDIR...] (one per data seed), in table order")
  p.add_argument("--plot", default="", help="where to write the figure (png)")
  args = p.parse_args(argv)
  seeds = parse_runs(args.runs)
  runs = {name: r[0] for name, r in seeds.items()}
  print(accuracy_table(runs))
  print()
  print(keep_table(runs))
  if any(len(r) > 1 for r in seeds.values()):
    print()
    print(final_table(seeds))
  if args.plot:
    plot(runs, args.plot)


if __name__ == "__main__":
  main()
