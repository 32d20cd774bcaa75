"""The optimizer: AdamW (optax) with warmup, a schedule and global-norm clipping.

The learning rate is computed inside the train step from the step number and the
schedule's numbers passed as arrays (``OptimConfig.schedule_args``), so a new
horizon or rate (every STaR iteration trains for another number of steps) reuses the
compiled step: only the schedule's kind and Adam's constants are compile-time.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = 1e-5
  warmup_steps: int = 100
  schedule: str = "constant"  # after warmup: constant | linear | cosine (to end_lr_factor)
  total_steps: int = 1000  # horizon of the linear/cosine decay
  end_lr_factor: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 1.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule must be constant, linear or cosine, got {self.schedule!r}")

  def static(self) -> "OptimConfig":
    """What the compiled step depends on: the schedule's kind and the optimizer's constants
    (the rate and the schedule's numbers are arguments)."""
    return dataclasses.replace(self, learning_rate=0.0, warmup_steps=0, total_steps=0,
                               end_lr_factor=0.0)

  def schedule_args(self) -> dict[str, np.ndarray]:
    return {k: np.float32(getattr(self, k))
            for k in ("learning_rate", "warmup_steps", "total_steps", "end_lr_factor")}


def learning_rate(schedule: str, args: dict, step) -> jax.Array:
  """The rate at ``step``: a linear warmup from lr/warmup (step 0 already trains) to lr at step
  warmup - 1, then constant, or a linear / cosine decay to lr * end_lr_factor at total_steps."""
  lr, warmup = args["learning_rate"], args["warmup_steps"]
  step = jnp.asarray(step, jnp.float32)
  ramp_steps = jnp.maximum(warmup - 1, 1)
  ramp = (lr / jnp.maximum(warmup, 1) - lr) * (1 - jnp.clip(step, 0, ramp_steps) / ramp_steps) + lr
  decay_steps = jnp.maximum(args["total_steps"] - warmup, 1)
  t = jnp.clip(step - warmup, 0, decay_steps)
  end = lr * args["end_lr_factor"]
  if schedule == "constant":
    main = lr
  elif schedule == "linear":
    main = (lr - end) * (1 - t / decay_steps) + end
  else:  # cosine
    alpha = args["end_lr_factor"]
    main = lr * ((1 - alpha) * 0.5 * (1 + jnp.cos(math.pi * t / decay_steps)) + alpha)
  return jnp.where((warmup > 0) & (step < warmup), ramp, main)


def make_schedule(oc: OptimConfig):
  """``step -> learning rate`` of a config (for plots and tests; the step computes its own)."""
  args = {k: jnp.asarray(v) for k, v in oc.schedule_args().items()}
  return lambda step: learning_rate(oc.schedule, args, step)


def make_optimizer(oc: OptimConfig) -> optax.GradientTransformation:
  """Clipping, Adam and decoupled weight decay; the update is then scaled by -learning_rate."""
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # no decay on norms/biases
  # clip_norm 0 is no clip (optax's clip at 0 would turn a zero gradient into 0/0 = NaN)
  return optax.chain(
      optax.clip_by_global_norm(oc.clip_norm) if oc.clip_norm > 0 else optax.identity(),
      optax.scale_by_adam(b1=oc.b1, b2=oc.b2, eps=oc.eps),
      optax.add_decayed_weights(oc.weight_decay, mask=decay_mask))
