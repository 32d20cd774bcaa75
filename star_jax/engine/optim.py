"""The optimizer: optax AdamW with warmup, a schedule and global-norm clipping."""

from __future__ import annotations

import dataclasses

import jax
import optax


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


def make_schedule(oc: OptimConfig) -> optax.Schedule:
  warmup = max(oc.warmup_steps, 0)
  decay_steps = max(oc.total_steps - warmup, 1)
  end = oc.learning_rate * oc.end_lr_factor
  if oc.schedule == "constant":
    main = optax.constant_schedule(oc.learning_rate)
  elif oc.schedule == "linear":
    main = optax.linear_schedule(oc.learning_rate, end, decay_steps)
  elif oc.schedule == "cosine":
    main = optax.cosine_decay_schedule(oc.learning_rate, decay_steps, alpha=oc.end_lr_factor)
  else:
    raise ValueError(f"schedule must be constant, linear or cosine, got {oc.schedule!r}")
  if warmup == 0:
    return main
  # Step k of warmup uses lr*(k+1)/warmup, so the very first update is not wasted at lr=0.
  ramp = optax.linear_schedule(oc.learning_rate / warmup, oc.learning_rate, max(warmup - 1, 1))
  return optax.join_schedules([ramp, main], [warmup])


def make_optimizer(oc: OptimConfig) -> optax.GradientTransformation:
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # no decay on norms/biases
  return optax.chain(
      optax.clip_by_global_norm(oc.clip_norm),
      optax.adamw(make_schedule(oc), b1=oc.b1, b2=oc.b2, eps=oc.eps,
                  weight_decay=oc.weight_decay, mask=decay_mask))
