"""How a run's train step grows with the slice: a table and a plot from `star_jax.plan` reports.

  for s in v5e-8 v5e-16 v5e-32 v5e-64; do
    python -m star_jax.plan --config=configs/cqa.py --topology=$s --train_only --cost_layers \
        --config.model.preset=llama3-8b ... | tail -1 > plans/$s.json
  done
  python -m benchmarks.plan_scaling plans/*.json --plot docs/img/plan_scaling.png

Each input is the JSON line `star_jax.plan` prints last. Per slice: chips, rows a chip, the train
step's GiB a chip against the chip's HBM (a refused step's figure is the compiler's report on
refusing, an upper estimate), what its collectives receive a chip, and the roofline step time
where the plan computed one (`--cost_layers` makes it affordable on a many-chip slice), with its
compute-alone part and the tokens/s it bounds.
"""

from __future__ import annotations

import argparse
import json
import re


def read(path: str) -> dict:
  with open(path) as f:
    lines = [line for line in f if line.strip().startswith("{")]
  if not lines:
    raise SystemExit(f"{path}: no JSON report (the plan's last stdout line)")
  return json.loads(lines[-1])


def train_program(report: dict) -> dict:
  return next(p for p in report["programs"] if p["what"].startswith("train step"))


def slice_name(report: dict) -> str:
  """"v5e-16" from the compiler line ("... for v5e-16: 16 x TPU v5 lite")."""
  return (report.get("compiler", "").split(" for ")[-1].rsplit(": ", 1)[0]
          or f"{report['devices']}")


def generation(name: str) -> str:
  return re.split("[-:]", name)[0]


def rows(reports: list[dict]) -> list[dict]:
  out = []
  for r in sorted(reports, key=lambda r: (generation(slice_name(r)), r["devices"])):
    t = train_program(r)
    roof = t.get("roofline") or {}
    refused = "refused" in t.get("derived", "")
    out.append({"slice": slice_name(r), "chips": r["devices"],
                "rows_per_chip": r["train_shape"][0] * r["train_shape"][1] / r["devices"],
                "gib": t["total"], "hbm": r["device_memory_gib"], "fits": t["fits"],
                "refused": refused, "overshoot": t.get("overshoot", 0.0),
                "collectives": t.get("collectives", {}),
                "step_ms": roof.get("step_seconds", 0.0) * 1e3 or None,
                "compute_ms": roof.get("compute_seconds", 0.0) * 1e3 * r["train_shape"][0],
                "tokens_per_s": roof.get("tokens_per_s"),
                "flops_ratio": roof.get("compiler_over_model_flops")})
  return out


def table(rs: list[dict]) -> str:
  lines = ["| slice | chips | rows a chip | train step GiB a chip | collectives GiB received a "
           "chip (once + per loop iteration) | roofline step (compute alone) | tokens/s bound |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in rs:
    verdict = ("fits" if r["fits"] else
               f"{'refused by the compiler' if r['refused'] else 'does not fit'}, "
               f"+{r['overshoot']:.1f}")
    col = r["collectives"]
    cols = (f"{col.get('once', 0.0):.2f} + {col.get('per loop iteration', 0.0):.2f}"
            if col else "—")
    step = f"{r['step_ms']:.0f} ms ({r['compute_ms']:.0f})" if r["step_ms"] else "—"
    tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "—"
    lines.append(f"| {r['slice']} | {r['chips']} | {r['rows_per_chip']:g} | {r['gib']:.1f} "
                 f"({verdict}) | {cols} | {step} | {tps} |")
  return "\n".join(lines)


def plot(rs: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  timed = any(r["step_ms"] for r in rs)
  fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(15 if timed else 10, 4))
  ax_m, ax_c = axes[0], axes[1]
  for gen in sorted({generation(r["slice"]) for r in rs}):
    g = [r for r in rs if generation(r["slice"]) == gen]
    line, = ax_m.plot([r["chips"] for r in g], [r["gib"] for r in g], "o-", label=gen)
    ax_m.axhline(g[0]["hbm"], color=line.get_color(), ls=":", lw=1)
    for r in g:
      if r["refused"]:
        ax_m.annotate("refused", (r["chips"], r["gib"]), fontsize=7)
    c = [r for r in g if r["collectives"]]
    ax_c.plot([r["chips"] for r in c],
              [r["collectives"].get("once", 0.0) + r["collectives"].get("per loop iteration", 0.0)
               for r in c], "o-", label=gen, color=line.get_color())
    t = [r for r in g if r["step_ms"]]
    if timed and t:
      axes[2].plot([r["chips"] for r in t], [r["step_ms"] for r in t], "o-", label=gen,
                   color=line.get_color())
  titles = [(ax_m, "train step, GiB a chip (dotted: the chip's HBM)"),
            (ax_c, "collectives, GiB received a chip")]
  if timed:
    titles.append((axes[2], "roofline step time, ms (a lower bound)"))
  for ax, title in titles:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chips")
    ax.set_title(title, fontsize=9)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("reports", nargs="+", help="files holding `star_jax.plan` JSON reports")
  ap.add_argument("--plot", default="", help="write the figure here")
  args = ap.parse_args(argv)
  rs = rows([read(p) for p in args.reports])
  print(table(rs))
  if args.plot:
    plot(rs, args.plot)


if __name__ == "__main__":
  main()
