"""Fine-tuning the decoder on (question, rationale) pairs: STaR's inner training step."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from star_jax import batching
from star_jax.report import progress
from star_jax.rollout import encode_prompt
from star_jax.tasks import Example, Task
from star_jax.tokenizer import Tokenizer
from star_jax.trainer import OptimConfig, Trainer


@dataclasses.dataclass
class FinetuneStats:
  steps: int
  examples: int
  too_long: int
  rows: int
  final_loss: float
  mean_loss: float
  tokens: float


def steps_for_iteration(star_cfg: ml_collections.ConfigDict, iteration: int) -> int:
  """Training steps at STaR iteration n >= 1: 40 * 1.2^(n-1) (paper) or base + k*(n-1)."""
  if iteration < 1:
    raise ValueError(f"iterations count from 1, got {iteration}")
  if star_cfg.steps_schedule == "exponential":
    return int(round(star_cfg.base_steps * star_cfg.steps_growth ** (iteration - 1)))
  if star_cfg.steps_schedule == "linear":
    return int(star_cfg.base_steps + star_cfg.steps_increment * (iteration - 1))
  raise ValueError(f"star.steps_schedule must be 'exponential' or 'linear', got "
                   f"{star_cfg.steps_schedule!r}")


def optim_config(train_cfg: ml_collections.ConfigDict, total_steps: int) -> OptimConfig:
  # A constant schedule ignores the horizon: leaving it out of the (hashable) optimizer
  # config lets every iteration reuse one compiled train step.
  horizon = 1 if train_cfg.schedule == "constant" else max(total_steps, 1)
  return OptimConfig(learning_rate=train_cfg.learning_rate, warmup_steps=train_cfg.warmup_steps,
                     schedule=train_cfg.schedule, total_steps=horizon,
                     end_lr_factor=train_cfg.end_lr_factor, b1=train_cfg.b1, b2=train_cfg.b2,
                     weight_decay=train_cfg.weight_decay, clip_norm=train_cfg.clip_norm)


def training_examples(task: Task, tokenizer: Tokenizer, pairs: Sequence[tuple[Example, str]],
                      few_shot: bool) -> list[batching.TrainExample]:
  """Prompt (no hint; few-shot if asked) + completion (rationale and gold answer)."""
  out = []
  for ex, rationale in pairs:
    prompt = encode_prompt(tokenizer, task.prompt(ex, hint=False, few_shot=few_shot))
    out.append(batching.TrainExample(prompt, tokenizer.encode(task.completion(rationale, ex))))
  return out


def finetune(trainer: Trainer, params, examples: Sequence[batching.TrainExample],
             train_cfg: ml_collections.ConfigDict, steps: int, seed: int,
             desc: str = "train") -> tuple[object, FinetuneStats]:
  """Trains a copy of ``params`` for ``steps`` steps; ``params`` itself stays intact."""
  packed = batching.pack(examples, train_cfg.seq_len, pack_rows=train_cfg.pack)
  if packed.num_too_long:
    logging.warning("%d of %d training examples exceed seq_len=%d and were skipped",
                    packed.num_too_long, len(examples), train_cfg.seq_len)
  if packed.num_examples == 0:
    return params, FinetuneStats(0, 0, packed.num_too_long, 0, math.nan, math.nan, 0.0)
  state = trainer.init(jax.tree.map(jnp.copy, params))  # the step donates its input
  batches = batching.iterate_batches(packed.batch, train_cfg.batch_size, steps, seed,
                                     grad_accum=train_cfg.grad_accum)
  losses, tokens = [], 0.0
  pending = None
  with progress(steps, desc, "step") as bar:
    for batch in batches:
      state, metrics = trainer.step(state, batch)
      if pending is not None:  # read step n-1's metrics after dispatching step n: no host stall
        losses.append(_check_finite(float(pending["loss"]), len(losses)))
        tokens += float(pending["tokens"])
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
      pending = metrics
      bar.update(1)
  if pending is not None:
    losses.append(_check_finite(float(pending["loss"]), len(losses)))
    tokens += float(pending["tokens"])
  stats = FinetuneStats(steps, packed.num_examples, packed.num_too_long,
                        len(packed.batch["tokens"]), losses[-1] if losses else math.nan,
                        float(np.mean(losses)) if losses else math.nan, tokens)
  return state.params, stats


def _check_finite(loss: float, step: int) -> float:
  if not math.isfinite(loss):
    raise FloatingPointError(f"training loss became {loss} at step {step}; lower "
                             "train.learning_rate or check the data")
  return loss
