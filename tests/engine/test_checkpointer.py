"""Orbax round trips, including onto a mesh of another shape."""

import jax
import numpy as np
import pytest

from conftest import mesh_of
from star_jax.engine import batching, params as params_lib
from star_jax.engine.checkpointer import Checkpointer
from star_jax.engine.model_config import get_preset
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import Trainer


def _trained_state(mesh, steps=2):
  graphdef, params = params_lib.init_params(get_preset("tiny"), mesh, seed=0)
  trainer = Trainer(graphdef, mesh, OptimConfig(learning_rate=1e-3, warmup_steps=0))
  state = trainer.init(params)
  batch = {k: v[None] for k, v in batching.pack(
      [batching.TrainExample([1, 2, 3], [4, 5])] * 8, 8, pack_rows=False).batch.items()}
  for _ in range(steps):
    state, _ = trainer.step(state, batch)
  return trainer, state, batch


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("save_shape,restore_shape", [((2, 2, 2), (2, 2, 2)),
                                                      ((8, 1, 1), (1, 2, 4)),
                                                      ((2, 2, 2), (1, 1, 1))])
def test_round_trip_onto_any_mesh(tmp_path, save_shape, restore_shape):
  _, state, batch = _trained_state(mesh_of(save_shape))
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(state, meta={"data_step": 2})
  ckpt.wait()
  saved = jax.tree.map(np.asarray, state)

  trainer2, target, _ = _trained_state(mesh_of(restore_shape), steps=0)
  restored, meta = ckpt.restore(target)
  assert meta == {"data_step": 2, "step": 2}
  _assert_trees_equal(restored, saved)
  # Restored arrays carry the new mesh's shardings ...
  for r, t in zip(jax.tree.leaves(restored.params), jax.tree.leaves(target.params)):
    assert r.sharding == t.sharding
  # ... and training continues from them exactly as it would have on the old mesh.
  cont, m_cont = trainer2.step(restored, batch)
  trainer1, state1, _ = _trained_state(mesh_of(save_shape), steps=2)
  orig, m_orig = trainer1.step(state1, batch)
  assert float(m_cont["loss"]) == pytest.approx(float(m_orig["loss"]), rel=1e-5)
  assert int(cont.step) == 3


def test_restore_params_only_and_missing_checkpoint(tmp_path, mesh1):
  _, state, _ = _trained_state(mesh1, steps=1)
  ckpt = Checkpointer(str(tmp_path / "c"), max_to_keep=2)
  ckpt.save(state)
  params = ckpt.restore_params(state.params)
  _assert_trees_equal(params, state.params)
  assert ckpt.all_steps() == [1]
  with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
    ckpt.restore_params(state.params, step=7)
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    Checkpointer(str(tmp_path / "empty")).restore(state)
