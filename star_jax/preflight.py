"""Pre-flight: will STaR take off from this config's base model?

  python -m star_jax.preflight --config=configs/cqa.py --config.data.dir=DIR \
      [--workdir=RUN] [--questions=64] [--samples=4] [--temperature=0.7]

Prints pass@1, pass@k, the rationalization success rate, the share of questions with a
keepable rationale (by difficulty where the task has one), chance and the choices'
log-likelihood accuracy for multiple-choice tasks, and a verdict; the last stdout line is
the report as JSON. ``--workdir`` reuses a run's base model (its iteration-0 checkpoint)
or holds what the pre-flight builds (tokenizer, pretraining; a ``main`` run of the same
config in it then starts from that warm start); default: a temporary dir.

Will STaR take off? Measured on the base model before anyone spends an accelerator day.

RL-STaR: STaR lifts the per-step success rate only where it starts above zero; the
paper's section 6: the first iteration only works when few-shot performance is above
chance. The pre-flight samples, for m train questions, one greedy rationale and k at a
temperature, without the hint and (for questions none of those solved) with it, and
reports what the first iteration would see: pass@1, pass@k, the rationalization success
rate, the share of questions with at least one keepable rationale (right answer, and a
rationale that reaches it), per difficulty where the task has one; how often a greedy
answer comes with a rationale at all, and how often those answers are right against the
direct ones (only the former can be kept); for multiple-choice tasks, chance and the
choices' log-likelihood accuracy. Then a plain verdict, which for multiple-choice tasks
asks whether the answers that come with a rationale beat chance.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import tempfile
from typing import Any

import numpy as np
from absl import flags
from ml_collections import config_flags

from star_jax import config as config_lib
from star_jax.experiment import workdir as wd
from star_jax.experiment.build import build, check, make_sampler
from star_jax.experiment.report import bucket_key
from star_jax.runtime import cli
from star_jax.sampling import SamplingParams
from star_jax.star import keep as keep_lib, rollout, seed as seed_lib
from star_jax.tasks import has_words


def _keepable(task, gens, config) -> keep_lib.Kept:
  return keep_lib.keep(task, gens, "generation", 1, config.star.require_supported)


def run(config: Any, workdir: str, questions: int = 64, samples: int = 4,
        temperature: float = 0.7, seed: int = 0) -> dict:
  """The pre-flight report (see the module docstring) as a dict; ``config`` a ConfigDict or
  a ``config.Config``. M_0 as the loop gets it: a run's iteration-0 checkpoint when
  ``workdir`` has one, else built (warm-started on the seed set if the config asks)."""
  config = config_lib.load(config)
  check(config)
  resuming = wd.is_resume(config, workdir)  # another config's run there: one clear error
  exp = build(config, workdir)
  if not resuming and config.pretrain.steps > 0:
    # The workdir now holds this config's run: `main` on it resumes the warm start built
    # here (minutes to an hour) instead of clearing it as a failed start's debris.
    wd.record_config(config, workdir)
  task = exp.task
  sampler = make_sampler(exp, config)
  params, source, _ = seed_lib.base_model(config, exp, workdir)
  params = exp.sampling_copy(params)
  rng = np.random.default_rng(seed)
  pool = exp.train_set
  chosen = [pool[i] for i in np.sort(rng.choice(len(pool), min(questions, len(pool)),
                                                replace=False))]

  def gen(exs, hint, n, temp):
    if not exs:
      return []
    return rollout.generate(task, exp.tokenizer, sampler, params, exs, hint=hint,
                            few_shot=config.star.few_shot if not hint else
                            config.star.few_shot_rationalization,
                            sampling=SamplingParams(temperature=temp), n=n, seed=seed,
                            desc=f"preflight {'hinted' if hint else 'plain'}")[0]

  greedy = gen(chosen, False, 1, 0.0)
  hot = gen(chosen, False, samples, temperature)
  plain = [_keepable(task, greedy, config), _keepable(task, hot, config)]
  solved = plain[0].solved | plain[1].solved
  failed = [ex for ex in chosen if ex.id not in solved]
  hinted = gen(failed, True, 1, 0.0) + gen(failed, True, samples, temperature)
  rescued = _keepable(task, hinted, config)
  rationalized = rescued.solved
  greedy_ok = {g.example.id for g in greedy if g.correct[0]}
  any_ok = greedy_ok | {g.example.id for g in hot if any(g.correct)}

  def share(ids, among):
    return len([e for e in among if e.id in ids]) / max(len(among), 1)

  def summary(among):
    return {"questions": len(among), "pass_at_1": share(greedy_ok, among),
            f"pass_at_{samples + 1}": share(any_ok, among),
            "keepable_by_generation": share(solved, among),
            "rationalization_success": share(rationalized, [e for e in among if e in failed]),
            "keepable": share(solved | rationalized, among)}

  report = {"task": task.name, "model": source, "questions": len(chosen), "samples": samples,
            "temperature": temperature, **summary(chosen),
            # Samples with the right answer whose own rationale does not reach it (a hint
            # copied into the answer line): what the support check drops.
            "unsupported": {"generation": plain[0].unsupported + plain[1].unsupported,
                            "rationalization": rescued.unsupported},
            "require_supported": bool(config.star.require_supported)}
  buckets = collections.defaultdict(list)
  for ex in chosen:
    if task.difficulty(ex) is not None:
      buckets[str(task.difficulty(ex))].append(ex)
  if buckets:
    report[f"by_{task.difficulty_name}"] = {b: summary(buckets[b])
                                            for b in sorted(buckets, key=bucket_key)}
  chance = float(np.mean([task.chance_accuracy(ex) for ex in chosen]))
  report["chance_accuracy"] = chance
  labels = collections.Counter(task.predicted_label(g.predictions[0], g.example)
                               for g in greedy)
  if chance > 0:
    report["predicted_label_shares"] = {str(k): v / len(greedy) for k, v in labels.items()}
    report["loglik_accuracy"] = rollout.choice_loglik_accuracy(task, exp.tokenizer, sampler,
                                                               params, chosen)
  report.update(reasoned_split(task, greedy))
  report["verdict"] = verdict(report, samples)
  return report


def reasoned_split(task, greedy: list[rollout.Generation]) -> dict:
  """Greedy answers with a worded rationale against direct ones (nothing before the answer
  phrase): their share and accuracy. Only the former can be kept, so it is their accuracy
  that has to beat chance for STaR to learn reasoning rather than lucky guesses."""
  reasoned = [has_words(task.split_rationale(g.texts[0])) for g in greedy]
  right = [bool(g.correct[0]) for g in greedy]

  def accuracy(flag):
    picked = [r for r, w in zip(right, reasoned) if w == flag]
    return sum(picked) / len(picked) if picked else None
  return {"reasoned": sum(reasoned), "reasoned_share": sum(reasoned) / max(len(greedy), 1),
          "reasoned_accuracy": accuracy(True), "direct_accuracy": accuracy(False)}


def _z(accuracy: float | None, chance: float, n: int) -> float:
  """How many standard errors ``accuracy`` on ``n`` answers lies above ``chance``."""
  return ((accuracy or 0.0) - chance) / math.sqrt(chance * (1 - chance) / n) if n else 0.0


def verdict(report: dict, samples: int) -> str:
  """One plain sentence: can STaR start from this model?"""
  m, chance, p1 = report["questions"], report["chance_accuracy"], report["pass_at_1"]
  if report["keepable"] == 0:
    return ("STaR cannot start: no question yields a keepable rationale, with or without the "
            "hint (RL-STaR: a zero chance of a right step is a fixed point)")
  by = next((v for k, v in report.items() if k.startswith("by_")), {})
  closed = [b for b, r in by.items() if r["keepable"] == 0]
  if chance > 0:
    z = _z(p1, chance, max(m, 1))
    if z < 2:
      return (f"STaR is not expected to take off: pass@1 {p1:.1%} is not above chance "
              f"({chance:.0%}; z = {z:.1f} on {m} questions), so kept rationales would mostly "
              f"be lucky guesses (the paper's section 6: GPT-2 could not bootstrap)")
    n, acc = report.get("reasoned", m), report.get("reasoned_accuracy", p1)
    z = _z(acc, chance, n)
    if z < 2:
      return (f"STaR is not expected to take off: answers that come with a rationale are "
              f"right {acc or 0:.1%} of the time, not above chance ({chance:.0%}; z = {z:.1f} "
              f"on {n}), so the kept rationales would mostly be lucky guesses; pass@1 "
              f"{p1:.1%} is carried by answers given without one")
  # Closed buckets keep nothing in the first iteration; a later one can open them from what
  # the neighbouring ones teach (SmolLM2, seed 1: 5 digits keepable 0%, 0 -> 58% by iteration 3).
  tail = (f"; but no keepable rationale at {', '.join(closed)}: those buckets keep nothing in "
          f"the first iteration and open only if what opens first carries over to them"
          if closed else "")
  return (f"STaR can start: {report['keepable']:.0%} of the questions give a keepable "
          f"rationale (pass@1 {p1:.1%}, pass@{samples + 1} "
          f"{report[f'pass_at_{samples + 1}']:.1%}, rationalization rescues "
          f"{report['rationalization_success']:.0%} of the rest){tail}")


def format_report(report: dict) -> str:
  """The report as the lines the command prints."""
  k = report["samples"] + 1
  lines = [f"pre-flight: {report['task']}, {report['model']}, {report['questions']} train "
           f"questions, greedy + {report['samples']} samples at T={report['temperature']}"]
  head = f"{'':>8} | questions | pass@1 | pass@{k} | kept (gen) | rationalized | keepable"
  lines += [head, "-" * len(head)]

  def row(name, r):
    return (f"{name:>8} | {r['questions']:>9} | {100 * r['pass_at_1']:5.1f}% | "
            f"{100 * r[f'pass_at_{k}']:5.1f}% | {100 * r['keepable_by_generation']:9.1f}% | "
            f"{100 * r['rationalization_success']:11.1f}% | {100 * r['keepable']:7.1f}%")
  lines.append(row("all", report))
  for key, value in report.items():
    if key.startswith("by_"):
      lines += [row(b, r) for b, r in value.items()]
  if report["chance_accuracy"] > 0:
    ll = report["loglik_accuracy"]
    shares = ", ".join(f"{k}: {100 * v:.0f}%" for k, v in sorted(
        report["predicted_label_shares"].items()))
    lines.append(f"chance {100 * report['chance_accuracy']:.0f}%; choices by log-likelihood: "
                 f"{100 * ll['acc']:.1f}% (per character {100 * ll['acc_norm']:.1f}%); greedy "
                 f"answers by label: {shares}")
  if report.get("reasoned_share") is not None:
    def acc(key):
      return "-" if report[key] is None else f"{100 * report[key]:.1f}%"
    lines.append(f"greedy answers with a rationale: {100 * report['reasoned_share']:.0f}% "
                 f"(right: {acc('reasoned_accuracy')}); without one: "
                 f"{100 * (1 - report['reasoned_share']):.0f}% (right: {acc('direct_accuracy')})")
  bad = report.get("unsupported", {})
  if any(bad.values()):
    fate = "dropped" if report.get("require_supported", True) else "kept: require_supported off"
    lines.append(f"right answers whose rationale does not reach them ({fate}): "
                 f"{bad['generation']} generated, {bad['rationalization']} hinted samples")
  lines.append("verdict: " + report["verdict"])
  return "\n".join(lines)


def define_flags() -> dict:
  """The command's flags (defined only when it runs: the module is a library too)."""
  out = {
      "config": config_flags.DEFINE_config_file("config", None, "A configs/*.py file[:variant].",
                                                lock_config=True),
      "workdir": flags.DEFINE_string("workdir", "", "A run's workdir to reuse, or where to "
                                     "build."),
      "questions": flags.DEFINE_integer("questions", 64, "Train questions to try."),
      "samples": flags.DEFINE_integer("samples", 4, "Samples per question at --temperature "
                                      "(besides the greedy one)."),
      "temperature": flags.DEFINE_float("temperature", 0.7, "Temperature of the samples."),
      "seed": flags.DEFINE_integer("seed", 0, "Question choice and sampling seed."),
  }
  flags.mark_flags_as_required(["config"])
  return out


FLAGS: dict = {}


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.log_progress()  # a warm start or a long sampling shows its progress on stderr
  with tempfile.TemporaryDirectory() as tmp:
    report = run(FLAGS["config"].value, FLAGS["workdir"].value or tmp,
                 FLAGS["questions"].value, FLAGS["samples"].value, FLAGS["temperature"].value,
                 FLAGS["seed"].value)
  print(format_report(report))
  print(json.dumps(report))
  sys.stdout.flush()


if __name__ == "__main__":
  FLAGS.update(define_flags())
  cli.run(main)
