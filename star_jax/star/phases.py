"""The phases of a STaR run, one function each; every phase resumes from what a killed
process left in the workdir (result shards, train-state checkpoints).

  pretrain      warm start on gold rationales of a seed set (tasks that have them)
  evaluate      greedy accuracy of a model on the eval set
  iteration     one STaR iteration: choose questions, generate, keep the correct,
                rationalize the failures, fine-tune; returns its metrics record
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import ml_collections
import numpy as np
from etils import epath

from star_jax.engine import lora
from star_jax.engine.checkpointer import Checkpointer, abstract_like
from star_jax.engine.trainer import Trainer, as_masters, cast_leaves, dtype_names
from star_jax.runtime.files import read_jsonl
from star_jax.sampling import Sampler, SamplingParams
from star_jax.star import finetune as ft, keep as keep_lib, rollout
from star_jax.star.board import Board, steps_before
from star_jax.star.experiment import Experiment


@dataclasses.dataclass
class Run:
  """What every phase of one run shares."""
  config: ml_collections.ConfigDict
  exp: Experiment
  sampler: Sampler
  ckpt: Checkpointer  # one checkpoint per finished iteration (0 = the base model)
  workdir: epath.Path
  board: Board | None = None  # TensorBoard events (None: none written)

  def dir(self, n: int, *parts: str) -> epath.Path:
    return self.workdir.joinpath(f"iter_{n:03d}", *parts)

  def on_step(self, n: int):
    """The per-step callback of iteration ``n``'s training (its steps after the run's
    earlier ones on TensorBoard's step axis), or None without a board."""
    if self.board is None:
      return None
    offset = steps_before(read_jsonl(self.workdir / "metrics.jsonl"), n)
    return lambda step, metrics: self.board.train_step(offset + step, metrics)

  def trainer(self, steps: int) -> Trainer:
    return Trainer(self.exp.graphdef, self.exp.mesh, ft.optim_config(self.config.train, steps),
                   master_dtype=self.config.train.master_dtype)

  # Which weights a run holds: a model a later fine-tune starts from (a pretrained M_0; M_n
  # without star.restart_from_base) keeps the trainer's master weights, or updates below the
  # compute dtype's spacing would be rounded away between fine-tunes; a model that is only
  # sampled from (M_n with restart_from_base) is held as the sampler's copy, in the model's
  # dtype. The sampler always gets that copy (made for the call when masters are held).
  def sampling_copy(self, params):
    return cast_leaves(params, dtype_names(self.exp.params))

  def layout(self, masters: bool):
    """Restore target of a saved model: the base model's layout, in the master dtype when
    ``masters``. With LoRA the model itself (its base never trains; a checkpoint of the base
    alone is restored with the model's fresh adapters)."""
    if lora.has_adapters(self.exp.params):
      return self.exp.params
    abstract = abstract_like(self.exp.params)
    return as_masters(abstract, self.config.train.master_dtype) if masters else abstract


def seed_examples(run: Run) -> list:
  """The seed set P as training examples: ``pretrain.data``'s problems with their gold
  rationales (``pretrain.targets="rationale"``) or their bare answers ("answer"), a
  ``pretrain.hint_fraction`` share of them shown with the hint."""
  config, exp = run.config, run.exp
  pc = config.pretrain
  if pc.targets not in ("rationale", "answer"):
    raise ValueError(f"pretrain.targets must be 'rationale' or 'answer', got {pc.targets!r}")
  data_cfg = ml_collections.ConfigDict(config.data.to_dict())
  for k, v in pc.data.items():
    data_cfg[k] = v
  pairs = []
  for ex in exp.task.load("train", data_cfg):
    gold = exp.task.gold_rationale(ex) if pc.targets == "rationale" else ""
    if gold is None:
      raise ValueError(f"pretrain needs gold rationales, and task {exp.task.name!r} has none; "
                       "set pretrain.targets='answer' or pretrain.steps=0")
    pairs.append((ex, gold))
  hints = np.random.default_rng([config.seed, 7]).random(len(pairs)) < pc.hint_fraction
  return ft.training_examples(exp.task, exp.tokenizer, pairs, few_shot=config.star.few_shot,
                              hints=hints)


def pretrain(run: Run) -> tuple[object, dict]:
  """Supervised training of the initial model on the seed set (the base model M_0).

  Returns the parameters and the fields iteration 0 records about it.
  """
  config, exp = run.config, run.exp
  pc = config.pretrain
  examples = seed_examples(run)
  t0 = time.time()
  params, stats = ft.finetune(run.trainer(pc.steps), exp.params, examples, config.train,
                              pc.steps, seed=config.seed, desc="pretrain",
                              ckpt_dir=run.workdir / "pretrain_ckpt",
                              checkpoint_every=config.checkpoint_every,
                              async_save=config.checkpoint_async, on_step=run.on_step(0),
                              keep_masters=True)  # every iteration's fine-tune starts from M_0
  if lora.has_adapters(params):
    # M_0 is the base every iteration's adapters train on: the pretrained adapters are folded
    # into its kernels, and it carries the fresh ones (so restart_from_base starts afresh).
    params = lora.restart(exp.graphdef, params, fresh=exp.params)
  params = jax.block_until_ready(params)
  seconds = time.time() - t0
  logging.info("pretrained on %d gold rationales for %d steps in %.0fs (final loss %.3f)",
               stats.examples, stats.steps, seconds, stats.final_loss)
  # A resumed pretraining counts only the time of the part it ran.
  return params, {"pretrain_examples": stats.examples, "pretrain_steps": stats.steps,
                  "pretrain_loss": stats.final_loss, "pretrain_seconds": seconds}


def evaluate(run: Run, n: int, params, few_shot: bool) -> rollout.EvalResult:
  t0 = time.time()
  params = run.sampling_copy(params)
  result = rollout.evaluate(run.exp.task, run.exp.tokenizer, run.sampler, params,
                            run.exp.eval_set, few_shot=few_shot, seed=run.config.seed,
                            shard_dir=run.dir(n, "eval_shards"),
                            shard_size=run.config.sample.shard_size)
  result.choice_loglik = rollout.choice_loglik_accuracy(run.exp.task, run.exp.tokenizer,
                                                        run.sampler, params, run.exp.eval_set)
  result.seconds = time.time() - t0
  return result


def _generate(run: Run, n: int, phase: str, params, questions, hint: bool, few_shot: bool,
              seed: int) -> tuple[list[rollout.Generation], int]:
  star = run.config.star
  return rollout.generate(run.exp.task, run.exp.tokenizer, run.sampler,
                          run.sampling_copy(params), questions, hint=hint, few_shot=few_shot,
                          sampling=SamplingParams(star.temperature, star.top_k, star.top_p),
                          n=star.samples_per_question, seed=seed, desc=f"iter {n} {phase}",
                          shard_dir=run.dir(n, f"{phase}_shards"),
                          shard_size=run.config.sample.shard_size)


def choose_questions(run: Run, rng: np.random.Generator) -> list:
  """The whole train set, or a random ``star.questions_per_iteration`` of it (in order)."""
  questions, k = run.exp.train_set, run.config.star.questions_per_iteration
  if k and k < len(questions):
    pick = np.sort(rng.choice(len(questions), k, replace=False))
    questions = [questions[i] for i in pick]
  return questions


def iteration(run: Run, n: int, base, params) -> tuple[dict, list[dict], object]:
  """STaR iteration ``n`` from M_{n-1} = ``params``: its record, kept rationales and M_n."""
  config, task = run.config, run.exp.task
  star = config.star
  rng = np.random.default_rng([config.seed, n])  # questions, then who is rationalized
  questions = choose_questions(run, rng)
  few_shot = star.few_shot if n == 1 else star.few_shot_in_training  # M_0 vs M_{n-1} format

  t0 = time.time()
  gens, skipped = _generate(run, n, "generate", params, questions, False, few_shot,
                            config.seed * 1000 + n)
  gen = keep_lib.keep(task, gens, "generation", star.max_kept_per_question,
                      star.require_supported)
  sample_seconds = time.time() - t0

  t0 = time.time()
  rat = keep_lib.Kept([], set(), [], 0)
  if star.rationalize and gen.failed:
    chosen = [ex for ex in gen.failed if rng.random() < star.p_rationalization]
    rgens, rskipped = _generate(run, n, "rationalize", params, chosen, True,
                                star.few_shot_rationalization, config.seed * 1000 + n + 500)
    skipped += rskipped
    rat = keep_lib.keep(task, rgens, "rationalization", star.max_kept_per_question,
                        star.require_supported)
  kept = gen.records + rat.records
  rationalize_seconds = time.time() - t0

  t0 = time.time()
  by_id = {ex.id: ex for ex in questions}
  new_params, stats = _train(run, n, base if star.restart_from_base else params, kept, by_id)
  record = {
      "iteration": n, "train_questions": len(questions),
      f"kept_by_{task.difficulty_name}": keep_lib.solved_by_difficulty(task, questions,
                                                                       gen.solved, rat.solved),
      "solved_by_generation": len(gen.solved), "solved_by_rationalization": len(rat.solved),
      "kept": len(kept), "train_steps": stats.steps if stats else 0,
      "train_loss": stats.final_loss if stats else None,
      "train_examples_too_long": stats.too_long if stats else 0,
      "prompts_skipped_too_long": skipped,
      "train_pass_at_1": sum(sum(g.correct) for g in gens)
                         / max(len(gens) * star.samples_per_question, 1),
      "kept_wrong_step_share": keep_lib.wrong_step_share(task, by_id, kept),
      "kept_wrong_step_share_by_source": keep_lib.wrong_step_share_by_source(task, by_id, kept),
      # right answers whose rationale does not reach them (not kept with require_supported)
      "unsupported_by_source": {"generation": gen.unsupported,
                                "rationalization": rat.unsupported},
      "sample_seconds": sample_seconds, "rationalize_seconds": rationalize_seconds,
      "train_seconds": time.time() - t0,
  }
  return record, kept, new_params


def _train(run: Run, n: int, start, kept: list[dict], by_id: dict
           ) -> tuple[object, ft.FinetuneStats | None]:
  """Fine-tunes ``start`` on the kept rationales (none kept: ``start`` unchanged)."""
  if not kept:
    logging.warning("iteration %d kept no rationales: training skipped, the model is "
                    "unchanged", n)
    return start, None
  config = run.config
  steps = ft.steps_for_iteration(config.star, n)
  examples = ft.training_examples(run.exp.task, run.exp.tokenizer,
                                  [(by_id[k["id"]], k["rationale"]) for k in kept],
                                  few_shot=config.star.few_shot_in_training)
  return ft.finetune(run.trainer(steps), start, examples, config.train, steps,
                     seed=config.seed * 1000 + n, desc=f"iter {n} train",
                     ckpt_dir=run.dir(n, "train_ckpt"), checkpoint_every=config.checkpoint_every,
                     async_save=config.checkpoint_async, on_step=run.on_step(n),
                     keep_masters=not config.star.restart_from_base)
