"""Kill the arithmetic :smoke run with SIGKILL at several points, rerun, compare with a clean run."""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers.runs import ROOT, load_config, run_results
from star_jax import star
from star_jax.experiment import workdir as wd
from star_jax.runtime.errors import CheckpointError, ConfigError, WorkdirMismatchError

CMD = [sys.executable, "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke"]


def _run(workdir, failpoint=None, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device, as a user would run it
  # (The runs compile the same programs; the session's persistent compilation cache, which
  # conftest.py sets in the environment, compiles each once.)
  env.pop("STAR_JAX_FAILPOINT", None)
  if failpoint:
    env["STAR_JAX_FAILPOINT"] = failpoint
  return subprocess.run(CMD + [f"--workdir={workdir}", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


def test_killed_run_resumes_to_the_samerun_results(tmp_path):
  clean = tmp_path / "clean"
  proc = _run(clean)
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected = run_results(clean)

  killed = tmp_path / "killed"
  # Each rerun starts counting afresh; together they cut the run at every phase.
  for failpoint, where in [("train_step:50", "pretraining, after its step-48 checkpoint"),
                           ("sample_shard:2", "iteration 0 evaluation, after its last shard"),
                           ("sample_shard:1", "iteration 1 generation, after one of two shards"),
                           ("train_step:5", "iteration 1 training, after its step-4 checkpoint"),
                           ("before_metrics:1", "between iteration 1's checkpoint and metrics")]:
    proc = _run(killed, failpoint)
    assert proc.returncode == -signal.SIGKILL, (where, proc.returncode, proc.stderr[-3000:])
    for path, _, names in os.walk(killed):  # atomic writes: no partial line anywhere
      for name in names:
        if name.endswith(".jsonl"):
          text = open(os.path.join(path, name)).read()
          assert not text or text.endswith("\n"), os.path.join(path, name)
  proc = _run(killed)
  assert proc.returncode == 0 and "resuming" in proc.stderr
  assert run_results(killed) == expected
  # A finished run rerun is a no-op that keeps the results.
  proc = _run(killed)
  assert proc.returncode == 0 and run_results(killed) == expected

  # A run of one iteration, extended to the config's two, equals the two-iteration run.
  extended = tmp_path / "extended"
  assert _run(extended, None, "--config.star.iterations=1").returncode == 0
  proc = _run(extended)
  assert proc.returncode == 0 and "resuming" in proc.stderr, proc.stderr[-3000:]
  assert run_results(extended) == expected


def test_changed_config_is_refused_naming_the_keys(tmp_path):
  config = load_config("arithmetic")
  config.star.iterations = 0
  config.pretrain.steps = 2
  workdir = str(tmp_path / "run")
  star.run(config, workdir)
  config.train.learning_rate = 0.5
  config.star.rationalize = False
  config.checkpoint_every = 7  # operational: allowed to differ
  config.star.iterations = 3  # more iterations extend a run
  assert wd.ConfigMismatchError is WorkdirMismatchError  # the name earlier releases raised
  with pytest.raises(WorkdirMismatchError) as e:
    star.run(config, workdir)
  msg = str(e.value)
  assert "train.learning_rate" in msg and "star.rationalize" in msg and "--overwrite" in msg
  assert "checkpoint_every" not in msg and "star.iterations" not in msg
  config.star.iterations = 0
  star.run(config, workdir, overwrite=True)  # the explicit way to start over
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["learning_rate"] == 0.5


def test_unknown_config_keys_are_rejected(tmp_path):
  config = load_config("arithmetic")
  config.star.unlock()
  config.star.iteratons = 3
  with pytest.raises(ConfigError,
                     match=r"unknown config key star\.iteratons \(did you mean 'iterations'\?\)"):
    star.run(config, str(tmp_path / "run"))
  assert issubclass(ConfigError, ValueError)
  assert not os.path.exists(tmp_path / "run")  # rejected before anything is written


def test_model_checkpoint_that_is_missing_or_mismatched_gets_a_clear_error(tmp_path):
  from conftest import mesh_of
  from star_jax.engine import model_config, params as P
  from star_jax.hub.checkpointer import Checkpointer, load_params
  mesh = mesh_of((1, 1, 1))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_params(str(tmp_path / "nope"), None)
  _, small = P.init_params(model_config.get_preset("tiny"), mesh)
  ckpt = Checkpointer(str(tmp_path / "ck"))
  ckpt.save_params(0, small)
  ckpt.wait()
  _, big = P.init_params(model_config.get_preset("tiny", d_model=128, head_dim=32), mesh)
  with pytest.raises(ValueError, match="does not match model config"):
    load_params(str(tmp_path / "ck"), big)
  restored = load_params(str(tmp_path / "ck"), small)
  assert P.count(restored) == P.count(small)
  # A run naming a missing checkpoint fails before it writes anything.
  config = load_config("arithmetic")
  config.model.checkpoint = str(tmp_path / "nope")
  with pytest.raises(CheckpointError, match=r"unknown checkpoint '.*nope': not an existing"):
    star.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
