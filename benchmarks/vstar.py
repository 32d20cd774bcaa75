"""V-STaR's numbers (docs/variants.md): best-of-j by the verifier against majority@j and pass@j.

  python -m benchmarks.vstar --runs paper=runs/vstar k16=runs/vstar16 \
      --verify generator=runs/vstar/verify_gen.json --plot docs/img/vstar.png

``--runs``: finished runs with ``verifier.enabled`` and ``eval.samples`` = k (every iteration
a verifier was trained after); ``--verify``: the JSON files ``python -m star_jax.verify``
wrote (another recipe on a run's samples). Prints, per run and iteration, the verifier's
training numbers and accuracy at every j, and plots accuracy against k (the paper's figure)
for each run's last iteration and each verify file.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.variants import parse_runs


def rows_of(name: str, metrics: list[dict]) -> list[dict]:
  """Each iteration with a verifier as one row: its recipe's numbers and the curves."""
  out = []
  for m in metrics:
    if "eval_verifier_best_of" not in m:
      continue
    out.append({"name": name, "iteration": m["iteration"], "pairs": m.get("verifier_pairs"),
                "questions": m.get("verifier_questions"), "init": m.get("verifier_init"),
                "beta": m.get("verifier_beta"), "train_acc": m.get("verifier_train_accuracy"),
                "heldout_acc": m.get("verifier_pairwise_accuracy"), "greedy": m["eval_accuracy"],
                "pass": m["eval_pass_at"], "majority": m["eval_majority_at"],
                "verifier": m["eval_verifier_best_of"], "seconds": m.get("verifier_seconds")})
  return out


def verify_row(name: str, path: str) -> dict:
  r = json.load(open(path))
  return {"name": name, "iteration": r["iteration"], "pairs": r.get("verifier_pairs"),
          "questions": r.get("verifier_questions"), "init": r.get("verifier_init"),
          "beta": r.get("verifier_beta"), "train_acc": r.get("verifier_train_accuracy"),
          "heldout_acc": r.get("verifier_pairwise_accuracy"), "greedy": None,
          "pass": r["pass_at"], "majority": r["majority_at"], "verifier": r["verifier_best_of"],
          "seconds": r.get("verifier_seconds")}


def pct(x) -> str:
  return "—" if x is None else f"{100 * x:.1f}"


def table(rows: list[dict]) -> str:
  js = sorted({j for r in rows for j in r["verifier"]}, key=int)
  head = ("| recipe | iter | pairs (questions) | train / held-out pair acc. | "
          + " | ".join(f"@{j}: maj / ver / pass" for j in js) + " |")
  out = [head, "| --- " * (4 + len(js)) + "|"]
  for r in rows:
    cells = [f"{pct(r['majority'].get(j))} / **{pct(r['verifier'].get(j))}** / "
             f"{pct(r['pass'].get(j))}" for j in js]
    out.append(f"| {r['name']} | {r['iteration']} | {r['pairs']} ({r['questions']}) | "
               f"{pct(r['train_acc'])} / {pct(r['heldout_acc'])} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for i, r in enumerate(rows):
    js = sorted(r["verifier"], key=int)
    x = [int(j) for j in js]
    color = f"C{i}"
    ax.plot(x, [100 * r["verifier"][j] for j in js], "o-", color=color,
            label=f"{r['name']} (iter {r['iteration']}): verifier best-of-k")
    ax.plot(x, [100 * r["majority"][j] for j in js], "s--", color=color, alpha=0.6,
            label=f"{r['name']}: majority@k")
    if i == 0:
      ax.plot(x, [100 * r["pass"][j] for j in js], ":", color="gray", label="pass@k")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("k (samples per held-out question)")
  ax.set_ylabel("held-out accuracy (%)")
  ax.set_title("V-STaR on arithmetic: best-of-k by the verifier")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", nargs="*", default=[], help="name=workdir")
  parser.add_argument("--verify", nargs="*", default=[], help="name=verify JSON")
  parser.add_argument("--plot", default=None)
  args = parser.parse_args(argv)
  runs = parse_runs(args.runs)
  rows = [r for name, seeds in runs.items() for ms in seeds for r in rows_of(name, ms)]
  rows += [verify_row(*spec.split("=", 1)) for spec in args.verify]
  print(table(rows))
  if args.plot:
    last = {}
    for r in rows:
      last[r["name"]] = r  # each recipe's last iteration
    plot(list(last.values()), args.plot)


if __name__ == "__main__":
  main()
