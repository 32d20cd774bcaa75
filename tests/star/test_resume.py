"""The arithmetic :smoke run from the command line, as a newcomer runs it; killed with SIGKILL
at several points, rerun, compared with the clean run."""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers.runs import (ROOT, check_artifacts, checksums, command, load_config, read_events,
                          run_results)
from star_jax import config as config_lib, star, tasks
from star_jax.data import DataConfig
from star_jax.experiment import workdir as wd
from star_jax.runtime.errors import CheckpointError, ConfigError, WorkdirMismatchError

CMD = [sys.executable, "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke"]


def _run(workdir, failpoint=None, *args):
  """The smoke run; killed at ``failpoint`` if given."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device, as a user would run it
  # (The runs compile the same programs; the session's persistent compilation cache, which
  # conftest.py sets in the environment, compiles each once.)
  env.pop("STAR_JAX_FAILPOINT", None)
  if failpoint:
    env["STAR_JAX_FAILPOINT"] = failpoint
  return subprocess.run(CMD + [f"--workdir={workdir}", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """(workdir, process) of the :smoke run from the command line, uninterrupted."""
  workdir = tmp_path_factory.mktemp("smoke") / "run"
  return workdir, _run(workdir)


def test_arithmetic_smoke_from_the_command_line(tmp_path, smoke_run):
  """As a newcomer runs it: a start that fails (a wrong checkpoint path) leaves nothing, the
  corrected command runs and says where it stands, and a re-run finds nothing to do."""
  config = load_config("arithmetic")
  smoke = f"--config={ROOT}/configs/arithmetic.py:smoke"
  failed = str(tmp_path / "run")
  code, _, err = command("main", smoke, f"--workdir={failed}",
                         "--config.model.checkpoint=/no/such/checkpoint", cwd=tmp_path)
  assert code == 2 and "/no/such/checkpoint" in err and "Traceback" not in err
  assert not os.path.exists(failed) and os.listdir(tmp_path) == []

  workdir, proc = smoke_run
  workdir, err = str(workdir), proc.stderr
  assert proc.returncode == 0, err[-3000:]
  log = err.strip().splitlines()
  assert "pretraining M_0 on the seed set" in err and "iteration 1: sampling rationales" in err
  assert "iter 1 generate: " in err  # progress lines in a log file, not a TTY bar
  assert "finished: 2 iterations" in log[-2] and f"results in {workdir}" in log[-1]
  assert "metrics.jsonl" in log[-1] and "tensorboard" in log[-1]
  # Distinct held-out problems: fewer than max_eval where the one-digit ones run out.
  task = tasks.get_task("arithmetic", **config.task_options.to_dict())
  n_eval = len(task.load("eval", DataConfig(**config.data.to_dict())))
  assert 0 < n_eval <= config.data.max_eval
  metrics, kept = check_artifacts(workdir, config, n_eval, ["Hint"])
  digits = [str(d) for d in range(1, config.task_options.eval_max_digits + 1)]
  for m in metrics:
    assert sorted(m["accuracy_by_digits"]) == digits
  with open(os.path.join(workdir, "accuracy_by_digits.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert kept, "the warm-started smoke model should solve some problems"
  assert metrics[1]["train_steps"] > 0
  # TensorBoard: every training step of the run on one axis, every iteration's metrics.
  events = read_events(os.path.join(workdir, "tensorboard"))
  total = metrics[0]["pretrain_steps"] + sum(m["train_steps"] for m in metrics[1:])
  assert [s for s, _ in events["train/loss"]] == list(range(1, total + 1))
  assert {"train/learning_rate", "train/tokens_per_s", "train/grad_norm"} <= set(events)
  assert [v for _, v in events["eval/eval_accuracy"]] == pytest.approx(
      [m["eval_accuracy"] for m in metrics])
  assert [s for s, _ in events["eval/accuracy_by_digits/1"]] == [0, 1, 2]
  text = dict(events["kept/examples/text_summary"])[1]
  assert kept[0]["question"] in text and "| source | question |" in text

  before = checksums(workdir)
  proc = _run(workdir)
  assert proc.returncode == 0 and "nothing to do" in proc.stderr
  assert checksums(workdir) == before


def test_killed_run_resumes_to_the_samerun_results(tmp_path, smoke_run):
  clean, proc = smoke_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  expected = run_results(clean)

  killed = tmp_path / "killed"
  # Each rerun starts counting afresh; together they cut the run at every phase.
  # The killed runs checkpoint every 4 steps (the clean one, as configured, every 50): the
  # kills land between checkpoints, and how often a run saves does not change its results.
  for failpoint, where in [("train_step:50", "pretraining, after its step-48 checkpoint"),
                           ("sample_shard:2", "iteration 0 evaluation, after its last shard"),
                           ("sample_shard:1", "iteration 1 generation, after one of two shards"),
                           ("train_step:5", "iteration 1 training, after its step-4 checkpoint"),
                           ("before_metrics:1", "between iteration 1's checkpoint and metrics")]:
    proc = _run(killed, failpoint, "--config.checkpoint_every=4")
    assert proc.returncode == -signal.SIGKILL, (where, proc.returncode, proc.stderr[-3000:])
    for path, _, names in os.walk(killed):  # atomic writes: no partial line anywhere
      for name in names:
        if name.endswith(".jsonl"):
          text = open(os.path.join(path, name)).read()
          assert not text or text.endswith("\n"), os.path.join(path, name)
  proc = _run(killed)
  assert proc.returncode == 0 and "resuming" in proc.stderr
  assert run_results(killed) == expected  # (a finished run rerun is a no-op: the test above)
  # (A run extended by more iterations equals the longer run: tests/star/test_lora_run.py, and
  # tests/star/test_compiles.py extends one without a compile.)


def test_a_workdir_holding_a_copied_run_without_its_config_is_refused_and_left_as_is(
    tmp_path, smoke_run):
  """A run's iteration 0 copied by hand into a new workdir (to branch from its M_0): without
  config.json the start is refused in one line, nothing touched (it once deleted the copies
  and failed mid-sampling on a model it no longer had); with config.json it resumes to the
  uninterrupted run's results."""
  import shutil
  clean, proc = smoke_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  copy = tmp_path / "copy"
  shutil.copytree(clean / "pretrain_ckpt", copy / "pretrain_ckpt")
  shutil.copytree(clean / "checkpoints" / "0", copy / "checkpoints" / "0")
  shutil.copytree(clean / "iter_000", copy / "iter_000")
  (copy / "metrics.jsonl").write_text(open(clean / "metrics.jsonl").readline())
  before = checksums(copy)
  proc = _run(copy)
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert err[-2].startswith(f"star_jax.main: error: {copy} holds a run's metrics.jsonl, "
                            "checkpoints, pretrain_ckpt but no config.json"), err[-3:]
  assert "--config.model.checkpoint=RUN/checkpoints/N" in err[-2]
  assert checksums(copy) == before and not (copy / wd.LOCK_NAME).exists()
  shutil.copy(clean / "config.json", copy / "config.json")
  proc = _run(copy)
  assert proc.returncode == 0 and "resuming" in proc.stderr, proc.stderr[-3000:]
  assert run_results(copy) == run_results(clean)


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


def test_a_run_from_another_runs_pretrained_weights_is_a_checkpoint_too(tmp_path, mesh1):
  """A run started from a bare orbax directory (an earlier run's ``pretrain_ckpt``, weights
  only: the config's preset says what they are) is named like any run by the next one: its
  iterations load as the weights it started from."""
  import numpy as np
  from jax import tree
  from star_jax.experiment.models import load_model
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  config = load_config("arithmetic")
  config.star.iterations, config.pretrain.steps = 0, 2
  star.run(config, first)
  config.model.checkpoint, config.pretrain.steps = os.path.join(first, "pretrain_ckpt"), 0
  star.run(config, second)
  started = load_model(os.path.join(first, "checkpoints", "0"), mesh1)
  loaded = load_model(os.path.join(second, "checkpoints", "0"), mesh1)
  assert loaded.model_cfg == started.model_cfg
  for a, b in zip(tree.leaves(loaded.params), tree.leaves(started.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_run_recorded_before_a_key_existed_resumes_with_the_key_at_its_default(tmp_path):
  config = load_config("arithmetic")
  workdir = str(tmp_path / "run")
  wd.record_config(config_lib.load(config), workdir)
  path = os.path.join(workdir, "config.json")
  recorded = json.load(open(path))
  del recorded["pretrain"]["hinted_task_options"]  # as written before the key was declared
  del recorded["task_options"]["final_from_steps"]
  with open(path, "w") as f:
    json.dump(recorded, f)
  assert wd.is_resume(config_lib.load(config), workdir)
  config.task_options.final_from_steps = True  # set away from its default: a different run
  with pytest.raises(WorkdirMismatchError, match=r"task_options.final_from_steps: '<unset>'"):
    wd.is_resume(config_lib.load(config), workdir)


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
