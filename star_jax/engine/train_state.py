"""What training carries from step to step (and what a train-state checkpoint holds)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx


class TrainState(NamedTuple):
  step: jax.Array
  params: nnx.State
  opt_state: Any
