"""The STaR outer loop (Zelikman et al. 2022), driven by an ml-collections config.

  M_0 = base model (optionally warm-started on gold rationales: ``pretrain``)
  for n in 1..N:
    generate a rationale for each (sampled) train question with M_{n-1}; keep correct ones
    rationalize failures: show the answer as a hint, keep rationales reaching it (hint removed)
    M_n = fine-tune(M_0 if restart_from_base else M_{n-1}, kept)
    evaluate M_n

Artifacts in ``workdir``: metrics.jsonl, iter_NNN/{kept,eval}.jsonl, checkpoints/,
config.json, tokenizer, accuracy.png (and accuracy_by_<difficulty>.png).
"""

from __future__ import annotations

import logging
import os
import time

import jax
import ml_collections
import numpy as np

from star_jax import failpoints
from star_jax import finetune as ft
from star_jax import report, rollout
from star_jax import workdir as wd
from star_jax.checkpoint import Checkpointer
from star_jax.experiment import Experiment, build
from star_jax.sampler import Sampler, SamplingParams
from star_jax.trainer import Trainer


def run(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False) -> list[dict]:
  """Runs (or resumes) every iteration of ``config`` in ``workdir``; returns the metrics."""
  wd.check_known_keys(config)
  os.makedirs(workdir, exist_ok=True)
  if overwrite:
    wd.clear(workdir)
  if wd.record_or_check_config(config, workdir):
    logging.info("resuming the run in %s (finished iterations: %s)", workdir,
                 wd.finished_iterations(workdir) or "none")
  exp = build(config, workdir)
  sampler = Sampler(exp.model_cfg, exp.graphdef, exp.mesh, end_ids=exp.tokenizer.end_ids,
                    pad_id=exp.tokenizer.pad_id, batch_size=config.sample.batch_size,
                    stop_sequences=rollout.stop_sequences(exp.tokenizer, exp.task.stop_strings))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  loop = _Loop(config, exp, sampler, ckpt, workdir)
  done = wd.finished_iterations(workdir)
  if 0 in done:
    base = ckpt.restore_params(exp.params, step=0)
  else:
    base, record = exp.params, {"iteration": 0}
    if config.pretrain.steps > 0:
      base, pretrain_record = loop.pretrain()
      record.update(pretrain_record)
    loop.finish(0, record, loop.evaluate(0, base, config.star.few_shot), [], base)
  last = max(done) if done else 0
  params = base if last == 0 else ckpt.restore_params(exp.params, step=last)
  for n in range(last + 1, config.star.iterations + 1):
    record, kept, params = loop.iteration(n, base, params)
    result = loop.evaluate(n, params, config.star.few_shot_in_training)
    loop.finish(n, record, result, kept, params)
  ckpt.wait()
  ckpt.close()
  return report.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


class _Loop:
  """The phases of one run; each resumes from what a killed process left behind."""

  def __init__(self, config, exp: Experiment, sampler: Sampler, ckpt: Checkpointer,
               workdir: str):
    self.config, self.exp, self.sampler, self.ckpt, self.workdir = (config, exp, sampler, ckpt,
                                                                    workdir)
    self.diff_key = f"accuracy_by_{exp.task.difficulty_name}"

  def _dir(self, n: int, *parts: str) -> str:
    return os.path.join(self.workdir, f"iter_{n:03d}", *parts)

  def _trainer(self, steps: int) -> Trainer:
    return Trainer(self.exp.graphdef, self.exp.mesh, ft.optim_config(self.config.train, steps))

  def _generate(self, n, phase, params, questions, hint, few_shot, sampling, seed):
    return rollout.generate(self.exp.task, self.exp.tokenizer, self.sampler, params, questions,
                            hint=hint, few_shot=few_shot, sampling=sampling,
                            n=self.config.star.samples_per_question, seed=seed,
                            desc=f"iter {n} {phase}", shard_dir=self._dir(n, f"{phase}_shards"),
                            shard_size=self.config.sample.shard_size)

  def evaluate(self, n: int, params, few_shot: bool) -> rollout.EvalResult:
    t0 = time.time()
    result = rollout.evaluate(self.exp.task, self.exp.tokenizer, self.sampler, params,
                              self.exp.eval_set, few_shot=few_shot, seed=self.config.seed,
                              shard_dir=self._dir(n, "eval_shards"),
                              shard_size=self.config.sample.shard_size)
    result.seconds = time.time() - t0
    return result

  def iteration(self, n: int, base, params) -> tuple[dict, list[dict], object]:
    config, exp = self.config, self.exp
    star, task = config.star, exp.task
    rng = np.random.default_rng([config.seed, n])
    questions = exp.train_set
    if star.questions_per_iteration and star.questions_per_iteration < len(questions):
      pick = np.sort(rng.choice(len(questions), star.questions_per_iteration, replace=False))
      questions = [questions[i] for i in pick]
    sampling = SamplingParams(star.temperature, star.top_k, star.top_p)
    few_shot = star.few_shot if n == 1 else star.few_shot_in_training  # M_0 vs M_{n-1} format

    t0 = time.time()
    gens, skipped = self._generate(n, "generate", params, questions, False, few_shot, sampling,
                                   config.seed * 1000 + n)
    kept, solved, failed = [], set(), []
    for g in gens:
      rats = _unique_rationales(task, g, star.max_kept_per_question)
      kept += [_kept_record(g.example, r, "generation") for r in rats]
      (solved.add(g.example.id) if rats else failed.append(g.example))
    sample_seconds = time.time() - t0
    correct_samples = sum(sum(g.correct) for g in gens)

    t0 = time.time()
    rationalized = set()
    if star.rationalize and failed:
      chosen = [ex for ex in failed if rng.random() < star.p_rationalization]
      rgens, rskipped = self._generate(n, "rationalize", params, chosen, True,
                                       star.few_shot_rationalization, sampling,
                                       config.seed * 1000 + n + 500)
      skipped += rskipped
      for g in rgens:
        rats = _unique_rationales(task, g, star.max_kept_per_question)
        kept += [_kept_record(g.example, r, "rationalization") for r in rats]
        if rats:
          rationalized.add(g.example.id)
    rationalize_seconds = time.time() - t0

    steps = ft.steps_for_iteration(star, n)
    t0 = time.time()
    by_id = {ex.id: ex for ex in questions}
    start = base if star.restart_from_base else params
    if kept:
      examples = ft.training_examples(task, exp.tokenizer,
                                      [(by_id[k["id"]], k["rationale"]) for k in kept],
                                      few_shot=star.few_shot_in_training)
      new_params, stats = ft.finetune(self._trainer(steps), start, examples, config.train, steps,
                                      seed=config.seed * 1000 + n, desc=f"iter {n} train",
                                      ckpt_dir=self._dir(n, "train_ckpt"),
                                      checkpoint_every=config.checkpoint_every)
    else:
      logging.warning("iteration %d kept no rationales: training skipped, the model is "
                      "unchanged", n)
      new_params, stats = start, None
    record = {
        "iteration": n, "train_questions": len(questions),
        f"kept_by_{task.difficulty_name}": _solved_by_difficulty(task, questions, solved,
                                                                 rationalized),
        "solved_by_generation": len(solved), "solved_by_rationalization": len(rationalized),
        "kept": len(kept), "train_steps": stats.steps if stats else 0,
        "train_loss": stats.final_loss if stats else None,
        "train_examples_too_long": stats.too_long if stats else 0,
        "prompts_skipped_too_long": skipped,
        "train_pass_at_1": correct_samples / max(len(gens) * star.samples_per_question, 1),
        "kept_wrong_step_share": _wrong_step_share(task, by_id, kept),
        "sample_seconds": sample_seconds, "rationalize_seconds": rationalize_seconds,
        "train_seconds": time.time() - t0,
    }
    return record, kept, new_params

  def finish(self, n: int, record: dict, result: rollout.EvalResult, kept: list[dict],
             params) -> None:
    """Writes the iteration's artifacts, checkpoint and metrics line (last: it marks done)."""
    exp, workdir = self.exp, self.workdir
    record.update(eval_accuracy=result.accuracy, eval_n=result.n, eval_seconds=result.seconds,
                  eval_skipped_too_long=result.skipped_too_long)
    steps = [r["step_accuracy"] for r in result.records if "step_accuracy" in r]
    if steps:  # per-step correctness of the generated rationales (RL-STaR's delta)
      record["eval_step_accuracy"] = float(np.mean(steps))
    if result.by_difficulty:
      record[self.diff_key] = result.by_difficulty
    if n > 0:
      report.write_jsonl(self._dir(n, "kept.jsonl"), kept)
    report.write_jsonl(self._dir(n, "eval.jsonl"), result.records)
    if n not in self.ckpt.all_steps():  # a killed run may have saved it already (same params)
      self.ckpt.save_params(n, params, meta={"iteration": n})
      self.ckpt.wait()
    failpoints.hit("before_metrics")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    report.append_metrics(metrics_path, record)
    for phase in ("generate", "rationalize", "eval"):  # done: the shards have served
      wd.Shards(self._dir(n, f"{phase}_shards")).remove()
    wd.Shards(self._dir(n, "train_ckpt")).remove()
    logging.info("%s", report.summary_line(record))
    kept_key = f"kept_by_{exp.task.difficulty_name}"
    if record.get(kept_key):
      logging.info("%s", report.kept_line(record[kept_key], exp.task.difficulty_name))
    metrics = report.read_jsonl(metrics_path)
    title = f"STaR on {exp.task.name}"
    report.plot_accuracy(metrics, os.path.join(workdir, "accuracy.png"), title)
    if self.diff_key in record:
      logging.info("eval accuracy by %s (%%):\n%s", exp.task.difficulty_name,
                   report.difficulty_table(metrics, self.diff_key))
      label = "{} digits" if exp.task.difficulty_name == "digits" else "{}"
      report.plot_by_difficulty(metrics, self.diff_key,
                                os.path.join(workdir, f"{self.diff_key}.png"), title, label)

  def pretrain(self) -> tuple[object, dict]:
    """Warm start: supervised training on gold rationales of a seed set (tasks that have them).

    Returns the parameters and the fields iteration 0 records about it.
    """
    config, exp = self.config, self.exp
    pc = config.pretrain
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    for k, v in pc.data.items():
      data_cfg[k] = v
    pairs = []
    for ex in exp.task.load("train", data_cfg):
      gold = exp.task.gold_rationale(ex)
      if gold is None:
        raise ValueError(f"pretrain needs gold rationales, and task {exp.task.name!r} has none; "
                         "set pretrain.steps=0")
      pairs.append((ex, gold))
    hints = np.random.default_rng([config.seed, 7]).random(len(pairs)) < pc.hint_fraction
    examples = ft.training_examples(exp.task, exp.tokenizer, pairs, few_shot=config.star.few_shot,
                                    hints=hints)
    t0 = time.time()
    params, stats = ft.finetune(self._trainer(pc.steps), exp.params, examples, config.train,
                                pc.steps, seed=config.seed, desc="pretrain",
                                ckpt_dir=os.path.join(self.workdir, "pretrain_ckpt"),
                                checkpoint_every=config.checkpoint_every)
    params = jax.block_until_ready(params)
    seconds = time.time() - t0
    logging.info("pretrained on %d gold rationales for %d steps in %.0fs (final loss %.3f)",
                 stats.examples, stats.steps, seconds, stats.final_loss)
    # A resumed pretraining counts only the time of the part it ran.
    return params, {"pretrain_examples": stats.examples, "pretrain_steps": stats.steps,
                    "pretrain_loss": stats.final_loss, "pretrain_seconds": seconds}


def _solved_by_difficulty(task, questions, solved: set, rationalized: set) -> dict:
  """Per difficulty bucket: questions asked, solved by generation, solved by rationalization."""
  out: dict[str, dict[str, int]] = {}
  for ex in questions:
    d = task.difficulty(ex)
    if d is None:
      continue
    row = out.setdefault(str(d), {"questions": 0, "generation": 0, "rationalization": 0})
    row["questions"] += 1
    row["generation"] += ex.id in solved
    row["rationalization"] += ex.id in rationalized
  return dict(sorted(out.items(), key=lambda kv: report.bucket_key(kv[0])))


def _wrong_step_share(task, by_id: dict, kept: list[dict]) -> float | None:
  """Share of kept rationales that reach the gold answer through a wrong step (tasks that
  know their true steps, e.g. arithmetic); None for tasks that do not."""
  if not kept or not hasattr(task, "step_correct"):
    return None
  wrong = [not all(task.step_correct(k["rationale"], by_id[k["id"]])) for k in kept]
  return float(np.mean(wrong))


def _unique_rationales(task, g: rollout.Generation, limit: int) -> list[str]:
  out = []
  for text, ok in zip(g.texts, g.correct):
    if ok:
      r = task.split_rationale(text)
      if r not in out:
        out.append(r)
  return out[:max(limit, 1)]


def _kept_record(ex, rationale: str, source: str) -> dict:
  return {"id": ex.id, "question": ex.question, "rationale": rationale, "answer": ex.answer,
          "source": source}
