"""The one train loop every trainer runs through (fine-tuning, the policy steps, the verifier's
DPO): checkpoints kept two deep, so a damaged newest one falls back to the one before; the
non-finite guard keeps the last finite state for any trainer; a resumed loop continues the
same steps."""

import os

import numpy as np
import pytest

from conftest import mesh_of
from star_jax.engine import batching, params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import Trainer
from star_jax.hub.checkpointer import COMMIT_MARKER, Checkpointer
from star_jax.runtime.errors import NonFiniteLossError
from star_jax.star.train_loop import TrainLoop


@pytest.fixture(scope="module")
def trained():
  """A tiny model's trainer, its initial state and a batch."""
  mesh = mesh_of((1, 1, 1))
  graphdef, params = params_lib.init_params(get_preset("tiny"), mesh, seed=0)
  trainer = Trainer(graphdef, mesh, OptimConfig(learning_rate=1e-3, warmup_steps=0))
  batch = {k: v[None] for k, v in batching.pack(
      [batching.TrainExample([1, 2, 3], [4, 5])] * 8, 8, pack_rows=False).batch.items()}
  return trainer, trainer.init(params), batch


def _step(trainer, batch, losses=None, seen=None):
  """A real train step, reporting a scripted loss (``losses[s]``) where given."""
  def step(state, s):
    state, metrics = trainer.step(state, batch)
    if seen is not None:
      seen.append(s)
    if losses and s in losses:
      metrics = dict(metrics, loss=np.float32(losses[s]))
    return state, metrics
  return step


def _copy(trainer, state):
  return trainer.init(trainer.model_params(state, masters=True), copy=True)


def test_a_policy_loop_keeps_two_checkpoints_and_falls_back_from_a_damaged_newest(
    tmp_path, trained, caplog):
  trainer, state0, batch = trained
  ck = str(tmp_path / "ck")
  with TrainLoop("iter 1 grpo", 6, ck, checkpoint_every=2, async_save=False,
                 step_key="policy_step") as loop:
    loop.resume(_copy(trainer, state0))
    loop.run(_copy(trainer, state0), _step(trainer, batch),
             meta=lambda: {"mine": 7})
  assert Checkpointer(ck).all_steps() == [4, 6]  # two deep
  os.remove(os.path.join(ck, "6", COMMIT_MARKER))  # as a copy cut short leaves it
  seen = []
  with caplog.at_level("WARNING"), TrainLoop("iter 1 grpo", 6, ck, step_key="policy_step",
                                             async_save=False) as loop:
    state = loop.resume(_copy(trainer, state0))
    assert (loop.start, loop.meta["mine"], int(state.step)) == (4, 7, 4)
    loop.run(state, _step(trainer, batch, seen=seen))
  assert seen == [5, 6]
  assert "checkpoint step 6" in caplog.text and "using step 4" in caplog.text


def test_a_non_finite_loss_in_any_loop_keeps_the_last_finite_checkpoint_and_says_so(
    tmp_path, trained, caplog):
  """The loss of step 4 is the state after 3 steps': checkpoint 3 (and later) goes, 2 stays;
  the rerun resumes at 2 and says where the earlier run stopped."""
  trainer, state0, batch = trained
  ck = str(tmp_path / "ck")
  with pytest.raises(NonFiniteLossError) as e:
    with TrainLoop("iter 1 verifier", 6, ck, checkpoint_every=1, async_save=False,
                   step_key="verifier_step") as loop:
      loop.run(_copy(trainer, state0), _step(trainer, batch, losses={4: np.nan}))
  assert str(e.value).startswith("training loss became nan at step 3; the checkpoint at step "
                                 "2, the last whose loss was finite, is kept")
  assert Checkpointer(ck).all_steps() == [2]
  with caplog.at_level("WARNING"), TrainLoop("iter 1 verifier", 6, ck,
                                             step_key="verifier_step") as loop:
    loop.resume(_copy(trainer, state0))
  assert loop.start == 2
  assert ("an earlier run stopped at step 3, where the loss was nan; resuming from step 2"
          in caplog.text)
