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

import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from star_jax import finetune as ft
from star_jax import report, rollout
from star_jax.checkpoint import Checkpointer
from star_jax.experiment import Experiment, build
from star_jax.sampler import Sampler, SamplingParams
from star_jax.trainer import Trainer


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every iteration of ``config``; returns the metrics records."""
  os.makedirs(workdir, exist_ok=True)
  report.write_atomic(os.path.join(workdir, "config.json"),
                      json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))
  exp = build(config, workdir)
  sampler = Sampler(exp.model_cfg, exp.graphdef, exp.mesh, end_ids=exp.tokenizer.end_ids,
                    pad_id=exp.tokenizer.pad_id, batch_size=config.sample.batch_size)
  trainer_for = lambda steps: Trainer(exp.graphdef, exp.mesh, ft.optim_config(config.train, steps))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  diff_key = f"accuracy_by_{exp.task.difficulty_name}"
  star = config.star

  base = exp.params
  if config.pretrain.steps > 0:
    base = _pretrain(config, exp, trainer_for(config.pretrain.steps))

  t0 = time.time()
  result = rollout.evaluate(exp.task, exp.tokenizer, sampler, base, exp.eval_set,
                            few_shot=star.few_shot, seed=config.seed)
  record = {"iteration": 0, "eval_accuracy": result.accuracy, "eval_n": result.n,
            "eval_seconds": time.time() - t0, "eval_skipped_too_long": result.skipped_too_long}
  if result.by_difficulty:
    record[diff_key] = result.by_difficulty
  _finish_iteration(workdir, 0, record, result, [], ckpt, base, metrics_path, exp, diff_key)

  params, few_shot = base, star.few_shot
  for n in range(1, star.iterations + 1):
    record, params = _iteration(config, exp, sampler, trainer_for, base, params, few_shot, n)
    few_shot = star.few_shot_in_training  # M_n speaks the format it was trained on
    t0 = time.time()
    result = rollout.evaluate(exp.task, exp.tokenizer, sampler, params, exp.eval_set,
                              few_shot=few_shot, seed=config.seed)
    record.update(eval_accuracy=result.accuracy, eval_n=result.n, eval_seconds=time.time() - t0,
                  eval_skipped_too_long=result.skipped_too_long)
    if result.by_difficulty:
      record[diff_key] = result.by_difficulty
    _finish_iteration(workdir, n, record, result, record.pop("_kept"), ckpt, params,
                      metrics_path, exp, diff_key)
  ckpt.wait()
  ckpt.close()
  return report.read_jsonl(metrics_path)


def _iteration(config, exp: Experiment, sampler: Sampler, trainer_for, base, params,
               few_shot: bool, n: int) -> tuple[dict, object]:
  star, task, tok = config.star, exp.task, exp.tokenizer
  rng = np.random.default_rng([config.seed, n])
  questions = exp.train_set
  if star.questions_per_iteration and star.questions_per_iteration < len(questions):
    pick = np.sort(rng.choice(len(questions), star.questions_per_iteration, replace=False))
    questions = [questions[i] for i in pick]
  sampling = SamplingParams(star.temperature, star.top_k, star.top_p)

  t0 = time.time()
  gens, skipped = rollout.generate(task, tok, sampler, params, questions, hint=False,
                                   few_shot=few_shot, sampling=sampling,
                                   n=star.samples_per_question, seed=config.seed * 1000 + n,
                                   desc=f"iter {n} generate")
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
    rgens, rskipped = rollout.generate(
        task, tok, sampler, params, chosen, hint=True, few_shot=star.few_shot_rationalization,
        sampling=sampling, n=star.samples_per_question, seed=config.seed * 1000 + n + 500,
        desc=f"iter {n} rationalize")
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
  pairs = [(by_id[k["id"]], k["rationale"]) for k in kept]
  start = base if star.restart_from_base else params
  if pairs:
    examples = ft.training_examples(task, tok, pairs, few_shot=star.few_shot_in_training)
    new_params, stats = ft.finetune(trainer_for(steps), start, examples, config.train, steps,
                                    seed=config.seed * 1000 + n, desc=f"iter {n} train")
  else:
    logging.warning("iteration %d kept no rationales: training skipped, the model is unchanged", n)
    new_params, stats = start, None
  record = {
      "iteration": n, "train_questions": len(questions),
      "solved_by_generation": len(solved), "solved_by_rationalization": len(rationalized),
      "kept": len(kept), "train_steps": stats.steps if stats else 0,
      "train_loss": stats.final_loss if stats else None,
      "train_examples_too_long": stats.too_long if stats else 0,
      "prompts_skipped_too_long": skipped,
      "train_pass_at_1": correct_samples / max(len(gens) * star.samples_per_question, 1),
      "sample_seconds": sample_seconds, "rationalize_seconds": rationalize_seconds,
      "train_seconds": time.time() - t0, "_kept": kept,
  }
  return record, new_params


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


def _finish_iteration(workdir, n, record, result, kept, ckpt, params, metrics_path, exp,
                      diff_key) -> None:
  it_dir = os.path.join(workdir, f"iter_{n:03d}")
  os.makedirs(it_dir, exist_ok=True)
  if n > 0:
    report.write_jsonl(os.path.join(it_dir, "kept.jsonl"), kept)
  report.write_jsonl(os.path.join(it_dir, "eval.jsonl"), result.records)
  ckpt.save_params(n, params, meta={"iteration": n})
  report.append_metrics(metrics_path, record)
  logging.info("%s", report.summary_line(record))
  metrics = report.read_jsonl(metrics_path)
  title = f"STaR on {exp.task.name}"
  report.plot_accuracy(metrics, os.path.join(workdir, "accuracy.png"), title)
  if diff_key in record:
    table = report.difficulty_table(metrics, diff_key)
    logging.info("eval accuracy by %s (%%):\n%s", exp.task.difficulty_name, table)
    label = "{} digits" if exp.task.difficulty_name == "digits" else "{}"
    report.plot_by_difficulty(metrics, diff_key, os.path.join(workdir, f"{diff_key}.png"),
                              title, label)


def _pretrain(config, exp: Experiment, trainer: Trainer):
  """Warm start: supervised training on gold rationales of a seed set (tasks that have them)."""
  pc = config.pretrain
  data_cfg = ml_collections.ConfigDict(config.data.to_dict())
  for k, v in pc.data.items():
    data_cfg[k] = v
  seed_set = exp.task.load("train", data_cfg)
  pairs = []
  for ex in seed_set:
    gold = exp.task.gold_rationale(ex)
    if gold is None:
      raise ValueError(f"pretrain needs gold rationales, and task {exp.task.name!r} has none; "
                       "set pretrain.steps=0")
    pairs.append((ex, gold))
  examples = ft.training_examples(exp.task, exp.tokenizer, pairs, few_shot=config.star.few_shot)
  t0 = time.time()
  params, stats = ft.finetune(trainer, exp.params, examples, config.train, pc.steps,
                              seed=config.seed, desc="pretrain")
  logging.info("pretrained on %d gold rationales for %d steps in %.0fs (final loss %.3f)",
               stats.examples, stats.steps, time.time() - t0, stats.final_loss)
  return jax.block_until_ready(params)
