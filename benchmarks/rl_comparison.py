"""STaR against RL on one budget (docs/variants.md): finished runs' metrics.jsonl, several
training seeds a method, as mean +- sd tables and a plot.

  python -m benchmarks.rl_comparison --runs star=runs/c_star_s0,runs/c_star_s1,runs/c_star_s2 \
      grpo=runs/c_grpo_s0,runs/c_grpo_s1,runs/c_grpo_s2 ... --plot docs/img/rl_comparison.png

Per method: held-out greedy accuracy per iteration (mean +- sd over the seeds), the last
iteration's by digits, what each iteration sampled (tokens) and trained (steps, sequences and
loss tokens a step), the
minutes its phases took, and for the policy-gradient methods their reward, all-wrong share
and KL to M_0.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.variants import parse_runs, wall_minutes


def mean_sd(values) -> str:
  v = [x for x in values if x is not None]
  if not v:
    return "—"
  if len(v) == 1:
    return f"{100 * v[0]:.1f}"
  return f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1):.1f}"


def accuracy_table(runs: dict[str, list[list[dict]]]) -> str:
  n = max(len(ms) for seeds in runs.values() for ms in seeds)
  rows = ["| method | seeds | " + " | ".join(f"iter {i}" for i in range(n)) + " | minutes |",
          "| --- " * (n + 3) + "|"]
  for name, seeds in runs.items():
    cells = [mean_sd([ms[i]["eval_accuracy"] for ms in seeds if len(ms) > i]) for i in range(n)]
    minutes = np.mean([wall_minutes(ms) for ms in seeds])
    rows.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + f" | {minutes:.0f} |")
  return "\n".join(rows)


def digits_table(runs: dict[str, list[list[dict]]]) -> str:
  """The last iteration every seed reached, by digits (mean +- sd)."""
  buckets = sorted({b for seeds in runs.values() for ms in seeds
                    for b in ms[-1].get("accuracy_by_digits", {})}, key=int)
  rows = ["| method | iter | " + " | ".join(f"{b} digits" for b in buckets) + " | majority@k |",
          "| --- " * (len(buckets) + 3) + "|"]
  for name, seeds in runs.items():
    last = min(len(ms) for ms in seeds) - 1
    ends = [ms[last] for ms in seeds]
    cells = [mean_sd([m.get("accuracy_by_digits", {}).get(b) for m in ends]) for b in buckets]
    rows.append(f"| {name} | {last} | " + " | ".join(cells)
                + f" | {mean_sd([m.get('eval_majority_accuracy') for m in ends])} |")
  return "\n".join(rows)


def budget_table(runs: dict[str, list[list[dict]]]) -> str:
  """What an iteration sampled and trained (sequences and loss tokens a step: a packed row
  holds several sequences), and the policy-gradient methods' own numbers (means over seeds
  and iterations)."""
  rows = ["| method | tokens sampled / iter | train steps / iter | sequences / step "
          "| loss tokens / step | reward (first -> last) | all-wrong share | all-right share "
          "| KL to M_0 (last step) |",
          "| --- " * 9 + "|"]
  for name, seeds in runs.items():
    its = [m for ms in seeds for m in ms[1:]]
    mean = lambda k: np.mean([m[k] for m in its if m.get(k) is not None]) if any(
        m.get(k) is not None for m in its) else None
    fmt = lambda x, f="{:.0f}": "—" if x is None else f.format(x)
    steps = mean("train_steps")
    sequences = mean("train_sequences_per_step")
    if sequences is None and mean("rl_trained_rows") is not None and steps:
      sequences = mean("rl_trained_rows") / steps  # a run from before the count was kept
    reward = (f"{mean('rl_reward_first'):.3f} -> {mean('rl_reward_last'):.3f}"
              if mean("rl_reward_mean") is not None else "—")
    rows.append(f"| {name} | {fmt(mean('tokens_sampled'))} | {fmt(steps)} | "
                f"{fmt(sequences, '{:.1f}')} | {fmt(mean('train_tokens_per_step'))} | {reward} | "
                f"{fmt(mean('rl_all_wrong_share'), '{:.2f}')} | "
                f"{fmt(mean('rl_all_right_share'), '{:.2f}')} | {fmt(mean('rl_kl'), '{:.3f}')} |")
  return "\n".join(rows)


def plot(runs: dict[str, list[list[dict]]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax, ax5) = plt.subplots(1, 2, figsize=(11, 4))
  for name, seeds in runs.items():
    n = min(len(ms) for ms in seeds)
    acc = np.array([[ms[i]["eval_accuracy"] for i in range(n)] for ms in seeds]) * 100
    five = np.array([[ms[i].get("accuracy_by_digits", {}).get("5", np.nan) for i in range(n)]
                     for ms in seeds]) * 100
    for a, y in ((ax, acc), (ax5, five)):
      m, s = y.mean(0), (y.std(0, ddof=1) if len(y) > 1 else np.zeros(n))
      a.plot(range(n), m, marker="o", label=f"{name} ({len(seeds)} seeds)")
      a.fill_between(range(n), m - s, m + s, alpha=0.15)
  ax.set_title("held-out accuracy, all lengths (mean ± sd)")
  ax5.set_title("held-out accuracy, 5 digits")
  for a in (ax, ax5):
    a.set_xticks(range(max(min(len(ms) for ms in seeds) for seeds in runs.values())))
    a.set_xlabel("iteration")
    a.set_ylabel("%")
    a.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", nargs="+", required=True,
                      help="method=workdir[,workdir...] (one workdir per training seed)")
  parser.add_argument("--plot", default="", help="write the figure here")
  args = parser.parse_args(argv)
  runs = parse_runs(args.runs)
  print(accuracy_table(runs), digits_table(runs), budget_table(runs), sep="\n\n")
  if args.plot:
    plot(runs, args.plot)


if __name__ == "__main__":
  main()
