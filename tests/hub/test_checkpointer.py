"""Orbax round trips, including onto a mesh of another shape."""

import jax
import numpy as np
import pytest

from conftest import mesh_of
from star_jax.engine import batching, params as params_lib
from star_jax.hub.checkpointer import Checkpointer
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


def test_async_save_overlaps_the_next_steps_and_restores_what_was_saved(tmp_path, mesh8):
  trainer, state, batch = _trained_state(mesh8)
  ckpt = Checkpointer(str(tmp_path / "async"), async_save=True)
  saved = jax.tree.map(np.asarray, state)
  ckpt.save(state, meta={"loss": 1.5})
  # The save has returned while its files are still being written, and the next steps run
  # meanwhile on the same (donated) buffers.
  overlapped = ckpt.saving()
  for _ in range(3):
    state, _ = trainer.step(state, batch)
  assert overlapped and int(state.step) == 5
  assert ckpt.latest_step() == 2  # waits for the write, then lists it
  assert not ckpt.saving()
  _, target, _ = _trained_state(mesh8, steps=0)
  restored, meta = ckpt.restore(target)
  assert meta == {"loss": 1.5, "step": 2}
  _assert_trees_equal(restored, saved)
  # A second save waits for none in flight here; both steps stay (max_to_keep=2).
  later = jax.tree.map(np.asarray, state)
  ckpt.save(state)
  restored, _ = ckpt.restore(target)
  _assert_trees_equal(restored, later)
  assert ckpt.all_steps() == [2, 5]
  ckpt.close()


_KILLED_MID_SAVE = """
import os, signal, sys
sys.path[:0] = [{tests!r}]
import conftest, jax, numpy as np
from test_checkpointer import _trained_state
from star_jax.hub.checkpointer import Checkpointer
trainer, state, batch = _trained_state(conftest.mesh_of((2, 2, 2)))
ckpt = Checkpointer({directory!r}, max_to_keep=1, async_save=True)
ckpt.save(state)
ckpt.wait()
np.savez({saved!r}, *[np.asarray(x) for x in jax.tree.leaves(state)])
state, _ = trainer.step(state, batch)
ckpt.save(state)  # step 3: killed while orbax writes it
print("saving" if ckpt.saving() else "done", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_during_an_async_save_leaves_the_previous_checkpoint(tmp_path, mesh8):
  import os
  import subprocess
  import sys
  directory, saved = str(tmp_path / "ck"), str(tmp_path / "saved.npz")
  tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = _KILLED_MID_SAVE.format(tests=os.path.join(tests, "hub"), directory=directory,
                                   saved=saved)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                            [tests, os.environ.get("PYTHONPATH", "")])))
  assert proc.returncode == -9, proc.stderr[-3000:]
  # The kill landed mid-write: step 3 is a temporary directory next to the finished step 2.
  assert proc.stdout.strip() == "saving"
  assert sorted(os.listdir(directory)) == ["2", "3.orbax-checkpoint-tmp"]
  ckpt = Checkpointer(directory, max_to_keep=1, async_save=True)
  assert ckpt.latest_step() == 2  # step 3 never committed; step 2 was not yet deleted
  _, target, _ = _trained_state(mesh8, steps=0)
  restored, meta = ckpt.restore(target)
  assert meta["step"] == 2
  with np.load(saved) as z:
    for x, y in zip(jax.tree.leaves(restored), [z[f"arr_{i}"] for i in range(len(z.files))]):
      np.testing.assert_array_equal(np.asarray(x), y)
  assert os.listdir(directory) == ["2"]  # opening it removed the debris
