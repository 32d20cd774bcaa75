"""Models on TPU slices: one table from `star_jax.plan` reports (docs/plan.md's TPU table).

  for m in gptj-6b llama-3.2-1b; do for s in v4-8 v5e-8; do
    python -m star_jax.plan --config=configs/cqa.py --topology=$s --config.model.preset=$m \
        ... | tail -1 > plans/${m}_$s.json
  done; done
  python -m benchmarks.plan_table plans/*.json

Each input is the JSON line `star_jax.plan` prints last. One row per model, fine-tuning (full or
LoRA rank r) and slice: each program's GiB a chip (train step / prefill / decode loop), the
verdict against the chip's HBM, and each program's roofline (time, compute alone in brackets,
tokens/s bound; the train step's MFU bound and how many of the model's FLOPs the compiler
counts). Reports of the same row merge program by program, a later file's program replacing an
earlier one's: a full plan followed by a `--train_only --cost_layers` one (the train step's
cost for a large model) gives one row.
"""

from __future__ import annotations

import argparse

from benchmarks.plan_scaling import read, slice_name

PROGRAMS = ("train", "prefill", "decode")


def kind(program: dict) -> str:
  """"train", "prefill" or "decode", from the program's name ("sampler decode loop (...)")."""
  return next(k for k in PROGRAMS if k in program["what"].split(" (")[0])


def merged(reports: list[dict]) -> list[dict]:
  """One entry per (model, LoRA rank, slice) in first-seen order, its programs by kind."""
  rows: dict[tuple, dict] = {}
  for r in reports:
    key = (r["model"], r.get("lora_rank", 0), slice_name(r))
    row = rows.setdefault(key, {"model": key[0], "lora_rank": key[1], "slice": key[2],
                                "chips": r["devices"], "hbm": r["device_memory_gib"],
                                "programs": {}})
    row["programs"].update({kind(p): p for p in r["programs"]})
  return list(rows.values())


def roofline(program: dict | None, train: bool) -> str:
  roof = (program or {}).get("roofline") or {}
  if "unit_seconds" not in roof:
    return "—"
  seconds = roof.get("step_seconds", roof["unit_seconds"])
  compute = roof["compute_seconds"] * seconds / roof["unit_seconds"]
  unit = "ms" if seconds >= 1e-3 else "µs"
  scale = 1e3 if unit == "ms" else 1e6
  out = (f"{seconds * scale:.{0 if train else 2}f} ({compute * scale:.{0 if train else 2}f}) "
         f"{unit}, {roof['tokens_per_s']:,.0f} tok/s")
  if train:
    out += f", MFU ≤ {roof['mfu_bound']:.0%}"
    if "compiler_over_model_flops" in roof:
      out += f", {roof['compiler_over_model_flops']:.2f} × the model's FLOPs"
  return out


def verdict(row: dict) -> str:
  progs = list(row["programs"].values())
  short = [p for p in progs if not p["fits"]]
  if short:
    worst = max(short, key=lambda p: p["overshoot"])
    refused = "; refused by the compiler" if "refused" in worst.get("derived", "") else ""
    over = worst["overshoot"]
    return f"**no** (+{over:.{1 if over >= 0.1 else 2}f}{refused})"
  spare = row["hbm"] - max(p["total"] for p in progs)
  return f"fits ({spare:.1f} spare)"


def table(rows: list[dict]) -> str:
  lines = ["| model | fine-tuning | slice | train / prefill / decode GiB a chip | verdict | "
           "train step: roofline (compute alone), tokens/s, MFU | prefill | decode step |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    p = r["programs"]
    gib = " / ".join(f"{p[k]['total']:.1f}" if k in p else "—" for k in PROGRAMS)
    tuning = f"LoRA r{r['lora_rank']}" if r["lora_rank"] else "full"
    lines.append(f"| {r['model']} | {tuning} | {r['slice']} ({r['chips']} x {r['hbm']:g} GiB) | "
                 f"{gib} | {verdict(r)} | {roofline(p.get('train'), True)} | "
                 f"{roofline(p.get('prefill'), False)} | {roofline(p.get('decode'), False)} |")
  return "\n".join(lines)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("reports", nargs="+", help="files holding `star_jax.plan` JSON reports")
  args = ap.parse_args(argv)
  print(table(merged([read(p) for p in args.reports])))


if __name__ == "__main__":
  main()
