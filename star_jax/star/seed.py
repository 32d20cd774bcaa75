"""M_0, the model STaR starts from: the base model, or the base warm-started on the seed set P.

The paper prompts a large model with P as few-shot exemplars; a small one learns P instead
(``pretrain``: a short supervised warm start on P's gold rationales, the structure of every
self-training recipe since). ``base_model`` is the one way the loop and the pre-flight get
M_0: a run's saved iteration 0 when the workdir has one, else built as the config asks.
"""

from __future__ import annotations

import logging
import time

import jax
import numpy as np
from etils import epath

from star_jax.config import Config, seed_train
from star_jax.engine import lora
from star_jax.engine.batching import TrainExample
from star_jax.experiment.build import Experiment, hinted_seed_set, seed_set
from star_jax.hub.checkpointer import Checkpointer
from star_jax.runtime.errors import ConfigError
from star_jax.star import finetune as ft


def seed_examples(config: Config, exp: Experiment) -> list[TrainExample]:
  """The seed set P as training examples: the train problems ``pretrain.data`` and
  ``pretrain.task_options`` choose, with their gold rationales (``pretrain.targets=
  "rationale"``) or bare answers ("answer"), a ``pretrain.hint_fraction`` share of them
  shown with the hint; then P's hinted part (``pretrain.hinted_task_options``), all shown
  with the hint."""
  pc = config.pretrain
  task, examples = seed_set(config, exp.task)
  hinted_task, hinted = hinted_seed_set(config, exp.task)
  pairs = ([(ex, _target(pc.targets, task, ex)) for ex in examples]
           + [(ex, _target(pc.targets, hinted_task, ex)) for ex in hinted])
  hints = np.concatenate([
      np.random.default_rng([config.seed, 7]).random(len(examples)) < pc.hint_fraction,
      np.ones(len(hinted), bool)])
  return ft.training_examples(exp.task, exp.tokenizer, pairs, few_shot=config.star.few_shot,
                              hints=hints)


def _target(targets: str, task, ex) -> str:
  """What P teaches for ``ex``: its gold rationale, or "" (the bare answer)."""
  if targets != "rationale":
    return ""
  gold = task.gold_rationale(ex)
  if gold is None:
    raise ConfigError(f"pretrain needs gold rationales, and task {task.name!r} has none; "
                      "set pretrain.targets='answer' or pretrain.steps=0")
  return gold


def warm_start(config: Config, exp: Experiment, workdir: epath.PathLike, on_step=None
               ) -> tuple[object, dict]:
  """Supervised training of the base model on P: M_0, and the fields iteration 0 records.

  Resumes from ``WORKDIR/pretrain_ckpt`` after a kill; the result keeps the trainer's master
  weights, since every iteration's fine-tune may start from it.
  """
  steps = config.pretrain.steps
  train_cfg = seed_train(config)
  examples = seed_examples(config, exp)
  logging.info("pretraining M_0 on the seed set: %d examples, %d steps", len(examples), steps)
  t0 = time.time()
  params, stats = ft.finetune(ft.make_trainer(exp, train_cfg, steps), exp.params, examples,
                              train_cfg, steps, seed=config.seed, desc="pretrain",
                              ckpt_dir=epath.Path(workdir) / "pretrain_ckpt",
                              checkpoint_every=config.checkpoint_every,
                              async_save=config.checkpoint_async, on_step=on_step,
                              keep_masters=True)
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


def saved_base(config: Config, exp: Experiment, ckpt: Checkpointer):
  """A run's saved M_0 (``checkpoints/0``), or None when it has none yet."""
  if 0 not in ckpt.all_steps():
    return None
  return ckpt.restore_model(exp.restore_target(masters=config.pretrain.steps > 0), step=0)


def base_model(config: Config, exp: Experiment, workdir: epath.PathLike, on_step=None
               ) -> tuple[object, str, dict | None]:
  """M_0, where it came from, and (when built here) iteration 0's fields about it."""
  with Checkpointer(epath.Path(workdir) / "checkpoints", max_to_keep=None) as ckpt:
    saved = saved_base(config, exp, ckpt)
  if saved is not None:
    return saved, "iteration 0 of the run in the workdir", None
  if config.pretrain.steps > 0:
    params, fields = warm_start(config, exp, workdir, on_step)
    return params, f"pretrained for {config.pretrain.steps} steps", fields
  return exp.params, config.model.checkpoint or "random initialisation", {}
