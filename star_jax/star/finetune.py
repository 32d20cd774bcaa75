"""Fine-tuning the decoder on (question, rationale) pairs: STaR's inner training step."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable, Sequence

import numpy as np
from etils import epath

from star_jax.config import StarConfig, TrainConfig
from star_jax.engine import batching, lora, precision, sharding
from star_jax.engine.losses import CrossEntropy
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import Trainer
from star_jax.runtime.errors import ConfigError
from star_jax.star.train_loop import TrainLoop
from star_jax.tasks import Example, Task
from star_jax.tokenizer import Tokenizer


@dataclasses.dataclass
class FinetuneStats:
  steps: int
  examples: int
  too_long: int
  rows: int
  final_loss: float
  mean_loss: float
  tokens: float
  first_loss: float = math.nan  # step 1's (a resumed fine-tune: as its checkpoint recorded)
  sequences: int = 0  # sequences trained on over the steps (a packed row holds several)


def steps_for_iteration(star_cfg: StarConfig, iteration: int) -> int:
  """Training steps at STaR iteration n >= 1: 40 * 1.2^(n-1) (paper) or base + k*(n-1)."""
  if iteration < 1:
    raise ValueError(f"iterations count from 1, got {iteration}")
  if star_cfg.steps_schedule == "exponential":
    return int(round(star_cfg.base_steps * star_cfg.steps_growth ** (iteration - 1)))
  if star_cfg.steps_schedule == "linear":
    return int(star_cfg.base_steps + star_cfg.steps_increment * (iteration - 1))
  raise ConfigError(f"star.steps_schedule must be 'exponential' or 'linear', got "
                   f"{star_cfg.steps_schedule!r}")


def update_reach_check(exp, train_cfg: TrainConfig, steps: int) -> str | None:
  """A warning when the sampled model would not carry a fine-tune of ``steps`` steps: Adam
  moves a weight by at most ~lr a step, and with ``train.rounding=nearest`` a weight whose
  half-spacing in the model's dtype exceeds lr x steps is sampled exactly as before (the
  paper's lr 1e-6 in bfloat16: most of them). None when the masters are the model's dtype,
  or rounding is stochastic (which carries such updates in expectation)."""
  trained, _ = lora.partition(exp.params)
  dtypes = {d for d in precision.dtype_names(trained)}
  master = train_cfg.master_dtype
  narrow = sorted(d for d in dtypes if master and precision.narrows(master, d))
  if not narrow or train_cfg.rounding != "nearest":
    return None
  reach = train_cfg.learning_rate * steps
  share = precision.share_below_spacing(trained, narrow[0], reach)
  if share < 0.5:
    return None
  return (f"train.learning_rate={train_cfg.learning_rate:g} x {steps} steps moves a weight by at "
          f"most ~{reach:.1e}, below half of {narrow[0]}'s spacing for {share:.0%} of the "
          f"trained weights: with train.rounding=nearest the sampled M_n keeps them exactly as "
          f"M_0 had them. Use train.rounding=stochastic (the default), model.dtype=float32 or "
          f"a larger rate.")


def optim_config(train_cfg: TrainConfig, total_steps: int) -> OptimConfig:
  # The horizon (and the rate) are arguments of the compiled step: every iteration reuses it.
  return OptimConfig(learning_rate=train_cfg.learning_rate, warmup_steps=train_cfg.warmup_steps,
                     schedule=train_cfg.schedule, total_steps=max(total_steps, 1),
                     end_lr_factor=train_cfg.end_lr_factor, b1=train_cfg.b1, b2=train_cfg.b2,
                     weight_decay=train_cfg.weight_decay, clip_norm=train_cfg.clip_norm)


def make_trainer(exp, train_cfg: TrainConfig, steps: int) -> Trainer:
  """A trainer for ``exp``'s model (an ``experiment.Experiment``) and ``steps`` steps."""
  return Trainer(exp.graphdef, exp.mesh, optim_config(train_cfg, steps),
                 master_dtype=train_cfg.master_dtype, rounding=exp.rounding,
                 rounding_seed=exp.rounding_seed,
                 loss=CrossEntropy(jitter=train_cfg.jitter_positions))


def micro_batching(batch_size: int, grad_accum: int, shards: int) -> tuple[int, int]:
  """(rows per micro-batch, micro-batches) for ``batch_size x grad_accum`` rows a step on a
  mesh that splits rows over ``shards``: rows rounded up to a multiple of the shards, as few
  micro-batches as still hold the step's rows (the same rows a step where the shards divide
  them, e.g. the configs' 1 x 8 on 8 devices is 8 x 1)."""
  if batch_size % shards == 0:
    return batch_size, grad_accum
  rows = -(-batch_size // shards) * shards
  return rows, max(1, -(-(batch_size * grad_accum) // rows))


def training_examples(task: Task, tokenizer: Tokenizer, pairs: Sequence[tuple[Example, str]],
                      few_shot: bool, hints: Sequence[bool] | None = None
                      ) -> list[batching.TrainExample]:
  """Prompt (few-shot if asked) + completion (rationale and gold answer).

  Prompts carry no hint, except where ``hints[i]`` is true: pretraining on a mix
  teaches a from-scratch base model what the rationalization hint means.
  """
  if hints is not None and len(hints) != len(pairs):
    raise ValueError(f"got {len(hints)} hint flags for {len(pairs)} examples")
  out = []
  for i, (ex, rationale) in enumerate(pairs):
    hint = bool(hints[i]) if hints is not None else False
    prompt = tokenizer.encode_prompt(task.prompt(ex, hint=hint, few_shot=few_shot))
    out.append(batching.TrainExample(prompt, tokenizer.encode(task.completion(rationale, ex))))
  return out


ROW_STEP = 64  # train.fit_rows rounds a row up to a multiple of this


def fitted(examples: Sequence[batching.TrainExample], train_cfg: TrainConfig) -> TrainConfig:
  """``train_cfg`` as a fine-tune on ``examples`` runs it: as configured, or with
  ``train.fit_rows`` = N rows as long as the longest example (less the one token a row's
  shift drops) rounded up to ``ROW_STEP``, at most ``train.seq_len`` (a longer example is
  skipped as too long either way), and N // that length of them a step."""
  if not (train_cfg.fit_rows and examples):
    return train_cfg
  longest = max(batching.row_tokens(ex) for ex in examples)
  seq_len = min(train_cfg.seq_len, ROW_STEP * -(-longest // ROW_STEP))
  return dataclasses.replace(train_cfg, seq_len=seq_len,
                             batch_size=max(1, train_cfg.fit_rows // seq_len))


def finetune(trainer: Trainer, params, examples: Sequence[batching.TrainExample],
             train_cfg: TrainConfig, steps: int, seed: int,
             desc: str = "train", ckpt_dir: epath.PathLike | None = None,
             checkpoint_every: int = 0, async_save: bool = True,
             on_step: Callable[[int, dict], None] | None = None,
             keep_masters: bool = False) -> tuple[object, FinetuneStats]:
  """Trains a copy of ``params`` for ``steps`` steps; ``params`` itself stays intact.
  With LoRA adapters in ``params`` only they train (and are checkpointed); the returned
  model is the same base with the trained adapters.

  The trainer's master weights are returned cast to the dtypes of ``params`` (what the
  sampler computes with), or as they are with ``keep_masters``: a model that a later
  fine-tune starts from must keep them, or updates below the compute dtype's spacing are lost.

  ``on_step(step, metrics)`` sees every step's loss, learning rate, gradient norm and
  throughput (tokens_per_s) as host floats, once they are known.

  With ``ckpt_dir`` the train state is saved every ``checkpoint_every`` steps and
  at the end, and a run that finds a checkpoint there continues from it: batches
  are a function of (seed, step), so the result equals an uninterrupted run's.
  A non-finite loss stops training, and the checkpoint kept is the last one whose own loss
  (computed by the step after it) was finite: a state that gives NaN never becomes the one a
  rerun resumes from, and the rerun says where the earlier run stopped.
  With ``async_save`` the steps after a save train while orbax writes it.
  """
  if train_cfg.fit_rows:
    train_cfg = fitted(examples, train_cfg)
    logging.info("%s: %d rows of %d tokens a step (train.fit_rows=%d: rows as long as the "
                 "longest example)", desc, train_cfg.batch_size, train_cfg.seq_len,
                 train_cfg.fit_rows)
  packed = batching.pack(examples, train_cfg.seq_len, pack_rows=train_cfg.pack)
  if packed.num_too_long:
    logging.warning("%d of %d training examples exceed seq_len=%d and were skipped",
                    packed.num_too_long, len(examples), train_cfg.seq_len)
  if packed.num_examples == 0:
    return params, FinetuneStats(0, 0, packed.num_too_long, 0, math.nan, math.nan, 0.0)
  state = trainer.init(params, copy=True)  # the step donates what it trains
  # Asynchronous: the next steps train while orbax writes (the save returns once the state
  # is in host memory); a kill mid-write leaves the previous checkpoint as the latest.
  with TrainLoop(desc, steps, ckpt_dir, checkpoint_every=checkpoint_every,
                 async_save=async_save) as loop:
    state = loop.resume(state)
    state, stats = _train(loop, trainer, state, packed, train_cfg, seed, on_step)
  return trainer.model_params(state, masters=keep_masters), stats


def _train(loop: TrainLoop, trainer, state, packed, train_cfg, seed, on_step
           ) -> tuple[object, FinetuneStats]:
  """The fine-tuning steps from ``loop.start``: packed rows in batches that are a function of
  (seed, step), so a resumed run equals an uninterrupted one."""
  steps, desc, meta = loop.steps, loop.desc, loop.meta
  rows, micro = micro_batching(train_cfg.batch_size, train_cfg.grad_accum,
                               sharding.batch_divisor(trainer.mesh))
  if (rows, micro) != (train_cfg.batch_size, train_cfg.grad_accum):
    logging.info("%s: %d x %d rows per step laid out as %d micro-batches of %d rows (the mesh "
                 "splits rows over %d batch shards)", desc, train_cfg.grad_accum,
                 train_cfg.batch_size, micro, rows, sharding.batch_divisor(trainer.mesh))
  batches = batching.iterate_batches(packed.batch, rows, steps, seed, grad_accum=micro,
                                     start_step=loop.start)
  # What the steps before a resume contributed, as their checkpoint recorded it.
  done = {"tokens": float(meta.get("tokens", 0.0)), "first_loss": meta.get("first_loss", math.nan),
          "sequences": int(meta.get("sequences", 0))}

  def step(state, s):
    batch = next(batches)
    done["sequences"] += batching.count_sequences(batch)
    try:
      return trainer.step(state, batch)
    except MemoryError as e:  # raised before the first step runs: nothing is lost
      raise MemoryError(f"{e}. In the config: train.batch_size rows per micro-batch, "
                        f"train.grad_accum micro-batches per step, train.seq_len tokens per "
                        f"row") from e

  clock = [time.perf_counter()]

  def settled(s, metrics):
    done["tokens"] += metrics["tokens"]
    if s == 1:
      done["first_loss"] = metrics["loss"]
    if on_step is not None:
      now = time.perf_counter()
      on_step(s, dict(metrics, tokens_per_s=metrics["tokens"] / max(now - clock[0], 1e-9)))
      clock[0] = now

  state = loop.run(state, step, meta=lambda: dict(done), on_step=settled)
  losses = [r["loss"] for r in loop.records]
  final = losses[-1] if losses else meta.get("loss", math.nan)
  stats = FinetuneStats(steps, packed.num_examples, packed.num_too_long,
                        len(packed.batch["tokens"]), final,
                        float(np.mean(losses)) if losses else final, done["tokens"],
                        done["first_loss"], done["sequences"])
  return state, stats
