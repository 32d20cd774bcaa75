"""A damaged checkpoint (a copy cut short before orbax's commit marker, a truncated file) is
found on restore, reported in one line and set aside; the newest good step is used; with none
good nothing changes. (The resumed run: tests/star/test_faults.py.)"""

import os

import jax
import numpy as np
import pytest

from helpers.runs import checksums
from star_jax.hub.checkpointer import COMMIT_MARKER, Checkpointer
from star_jax.runtime.errors import CheckpointError
from test_checkpointer import _trained_state

# (orbax leaves its reading coroutines unawaited when a damaged step fails: noise, not a fault)
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def two_steps(tmp_path, mesh1):
  """A directory with the train states after steps 1 and 2, and (the trainer, a target)."""
  trainer, state, batch = _trained_state(mesh1, steps=1)
  ckpt = Checkpointer(str(tmp_path / "ck"), max_to_keep=None)
  ckpt.save(state)
  ckpt.save(trainer.step(state, batch)[0])
  ckpt.close()
  return str(tmp_path / "ck"), _trained_state(mesh1, steps=0)[1]


def _truncate_largest(directory):
  path = max((os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs),
             key=os.path.getsize)
  os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", ["marker", "truncated", "metadata"])
def test_a_damaged_latest_step_is_set_aside_and_the_one_before_restored(two_steps, damage,
                                                                         caplog):
  directory, target = two_steps
  if damage == "marker":
    os.remove(os.path.join(directory, "2", COMMIT_MARKER))
  elif damage == "truncated":
    _truncate_largest(os.path.join(directory, "2", "params"))
  else:
    path = os.path.join(directory, "2", "opt_state", "_METADATA")
    os.truncate(path, 100)
  ckpt = Checkpointer(directory, max_to_keep=None)
  with caplog.at_level("WARNING"):
    state, meta = ckpt.restore(target)
  assert meta["step"] == 1 and int(state.step) == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  lines = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert lines[0].startswith(f"checkpoint step 2 in {directory} is unusable (")
  assert {"marker": "no commit marker", "truncated": "reading", "metadata": "_METADATA"}[damage] in (
      lines[0])
  assert ckpt.all_steps() == [1]  # the damaged one is kept beside them, out of orbax's sight
  assert [n for n in os.listdir(directory) if n.startswith("2.unusable-")]


def test_with_no_good_step_it_stops_naming_each_fault_and_changes_nothing(two_steps):
  directory, target = two_steps
  os.remove(os.path.join(directory, "2", COMMIT_MARKER))
  _truncate_largest(os.path.join(directory, "1", "params"))
  before = checksums(directory)
  ckpt = Checkpointer(directory, max_to_keep=None)
  with pytest.raises(CheckpointError) as e:
    ckpt.restore(target)
  msg = str(e.value)
  assert msg.startswith(f"no usable checkpoint in {directory}: step 2: no commit marker")
  assert "; step 1: " in msg and msg.endswith("Nothing was deleted.") and "\n" not in msg
  assert checksums(directory) == before
  # A step asked for by number: one line, nothing changed.
  with pytest.raises(CheckpointError, match="checkpoint step 2 in .* is unusable: no commit"):
    ckpt.restore(target, step=2)
  assert checksums(directory) == before
  with pytest.raises(CheckpointError, match="checkpoint step 1 in .* is unusable: .*reading"):
    ckpt.restore(target, step=1)  # the truncated one
  assert checksums(directory) == before


def test_a_target_of_another_shape_is_not_damage(two_steps, mesh1):
  """A model config that fits no step is the caller's mistake: nothing is set aside."""
  from star_jax.engine import params as params_lib
  from star_jax.engine.model_config import get_preset
  directory, _ = two_steps
  before = checksums(directory)
  _, wide = params_lib.init_params(get_preset("tiny", d_model=128, head_dim=32), mesh1)
  with pytest.raises(Exception, match="not compatible with the stored shape") as e:
    Checkpointer(directory, max_to_keep=None).restore_params(wide)
  assert not isinstance(e.value, CheckpointError)
  assert checksums(directory) == before



# --- a full disk under an asynchronous save ------------------------------------------------


def test_a_full_disk_in_the_asynchronous_write_is_one_line_at_close_and_never_hides_an_error(
    tmp_path, mesh1, monkeypatch, caplog):
  """The failpoint fires in orbax's background write, after the step's temporary directory
  exists: ``close`` reports it as ``wait`` does (one line); closing on the way out of another
  error logs it and lets that error through. (The rerun that cleans the partial step:
  tests/star/test_faults.py.)"""
  from star_jax.runtime.errors import DiskFullError
  _, state, _ = _trained_state(mesh1, steps=1)
  directory = str(tmp_path / "ck")
  monkeypatch.setenv("STAR_JAX_FAILPOINT", "checkpoint_async_write:1:ENOSPC")
  ckpt = Checkpointer(directory, max_to_keep=None, async_save=True)
  ckpt.save(state)  # returns once the state is in host memory; the write fails behind it
  with pytest.raises(DiskFullError) as e:
    ckpt.close()
  assert str(e.value) == f"no space left on device writing a checkpoint in {directory}"
  assert [n for n in os.listdir(directory) if "tmp" in n]  # orbax's partial step is left
  monkeypatch.setenv("STAR_JAX_FAILPOINT", "checkpoint_async_write:2:ENOSPC")  # the next write
  with caplog.at_level("WARNING"), pytest.raises(KeyError):
    with Checkpointer(str(tmp_path / "ck2"), max_to_keep=None, async_save=True) as ckpt:
      ckpt.save(state)
      raise KeyError("the error that stopped training")
  assert "while stopping on KeyError: the last checkpoint in" in caplog.text
