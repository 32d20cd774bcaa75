"""What Cloud TPU does to a run, on the arithmetic :smoke run: two launches on one workdir,
a non-finite loss, a corrupt checkpoint, a preemption notice (SIGTERM), a full disk.
(SIGKILL at every phase: test_resume.py.)"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers.runs import ROOT, load_config, run_results
from star_jax import config as config_lib, star
from star_jax.experiment import lock as lock_lib, workdir as wd
from star_jax.runtime import distributed
from star_jax.runtime.errors import WorkdirMismatchError

CMD = [sys.executable, "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke"]


def _env(failpoint=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device, as a user would run it
  env.pop("STAR_JAX_FAILPOINT", None)
  if failpoint:
    env["STAR_JAX_FAILPOINT"] = failpoint
  return env


def _run(workdir, failpoint=None, *args):
  """The smoke run from the command line (one iteration, a short pretraining)."""
  return subprocess.run(CMD + [f"--workdir={workdir}", *SHORT, *args], cwd=ROOT,
                        env=_env(failpoint), capture_output=True, text=True, timeout=600)


SHORT = ("--config.star.iterations=1", "--config.pretrain.steps=60")


def _lock_of(pid, host=None, heartbeat=None, boot_id=None):
  return {"host": host or socket.gethostname(), "pid": pid,
          "boot_id": distributed.this_process()["boot_id"] if boot_id is None else boot_id,
          "started": time.time() - 100, "heartbeat": heartbeat or time.time(), "token": "x"}


def _write_lock(workdir, record):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, wd.LOCK_NAME), "w") as f:
    json.dump(record, f)


# --- one run per workdir -----------------------------------------------------------------


def test_a_second_launch_on_a_running_workdir_is_refused_naming_the_holder(tmp_path):
  workdir = tmp_path / "run"
  first = subprocess.Popen(CMD + [f"--workdir={workdir}", *SHORT], cwd=ROOT, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    lock = workdir / wd.LOCK_NAME
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    assert lock.exists(), first.communicate()[1][-3000:]
    first.send_signal(signal.SIGSTOP)  # stays where it is: alive, holding the workdir
    try:
      second = _run(workdir)
    finally:
      first.send_signal(signal.SIGCONT)
    err = second.stderr.strip().splitlines()
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in err[0], err
    assert "Traceback" not in second.stderr and len(err) == 2  # the line, and --traceback
  finally:
    _, first_err = first.communicate(timeout=600)
  assert first.returncode == 0, first_err[-3000:]
  assert not lock.exists()  # released at exit
  assert "taking over" not in first_err


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
  workdir = tmp_path / "run"
  gone = subprocess.Popen(["true"])
  gone.wait()
  _write_lock(workdir, _lock_of(gone.pid))  # as a SIGKILLed run leaves it
  with caplog.at_level("WARNING"), wd.WorkdirLock(workdir) as held:
    assert json.load(open(held.path))["pid"] == os.getpid()
  assert f"from pid {gone.pid} on host {socket.gethostname()}: pid {gone.pid} is gone" in (
      caplog.text)
  assert not (workdir / wd.LOCK_NAME).exists()


def test_a_start_refused_after_the_lock_is_taken_gives_it_back(tmp_path):
  config = load_config("arithmetic")
  workdir = tmp_path / "run"
  wd.record_config(config_lib.load(config), str(workdir))
  config.train.learning_rate = 0.5  # another run's config: refused before anything is built
  with pytest.raises(WorkdirMismatchError):
    star.run(config, str(workdir))
  assert os.listdir(workdir) == ["config.json"]


def test_a_lock_from_another_host_is_kept_while_its_heartbeat_is_fresh(tmp_path, caplog):
  workdir = tmp_path / "run"
  _write_lock(workdir, _lock_of(1, host="tpu-vm-7"))
  with pytest.raises(wd.WorkdirLockedError, match="pid 1 on host tpu-vm-7"):
    wd.WorkdirLock(workdir).acquire()
  _write_lock(workdir, _lock_of(1, host="tpu-vm-7",
                                heartbeat=time.time() - wd.STALE_SECONDS - 5))
  with caplog.at_level("WARNING"), wd.WorkdirLock(workdir) as held:
    assert json.load(open(held.path))["pid"] == os.getpid()
  assert "from pid 1 on host tpu-vm-7: its heartbeat is" in caplog.text
  assert os.listdir(workdir) == []
  # Same host, after a reboot: the pid may be alive again, as another process.
  _write_lock(workdir, _lock_of(os.getppid(), boot_id="an-earlier-boot"))
  with wd.WorkdirLock(workdir):
    pass
  _write_lock(workdir, _lock_of(os.getppid()))  # alive, this boot: refused
  with pytest.raises(wd.WorkdirLockedError, match=f"pid {os.getppid()} on host"):
    wd.WorkdirLock(workdir).acquire()


def test_a_refused_or_failed_start_leaves_no_directory_behind(tmp_path):
  workdir = tmp_path / "a" / "run"
  with wd.WorkdirLock(workdir):
    assert os.listdir(workdir) == [wd.LOCK_NAME]
  assert os.listdir(tmp_path) == []


def test_the_heartbeat_renews_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(lock_lib, "HEARTBEAT_SECONDS", 0.05)
  with wd.WorkdirLock(tmp_path) as held:
    first = json.load(open(held.path))["heartbeat"]
    time.sleep(0.3)
    assert json.load(open(held.path))["heartbeat"] > first


# --- a non-finite loss -------------------------------------------------------------------


def test_a_non_finite_loss_keeps_the_last_checkpoint_whose_own_loss_was_finite(tmp_path, caplog):
  """At lr 3e4 the loss of the state after 5 steps is NaN (step 6 computes it): the checkpoint
  of that state must not be the one a rerun resumes from, or every rerun fails at once."""
  import dataclasses

  from conftest import mesh_of
  from star_jax.config import base_config
  from star_jax.engine import batching, params as params_lib
  from star_jax.engine.model_config import get_preset
  from star_jax.engine.trainer import Trainer
  from star_jax.hub.checkpointer import Checkpointer
  from star_jax.star import finetune as ft
  mesh = mesh_of((1, 1, 1))
  graphdef, params = params_lib.init_params(get_preset("tiny"), mesh)
  tc = dataclasses.replace(config_lib.load(base_config()).train, seq_len=16, learning_rate=3e4,
                           warmup_steps=0, batch_size=8, clip_norm=1e30)
  examples = [batching.TrainExample([1, 2, 3], [4, 5, 6])] * 8
  trainer = Trainer(graphdef, mesh, ft.optim_config(tc, 20))
  ck = str(tmp_path / "ck")

  def train():
    seen = {}
    with pytest.raises(FloatingPointError) as e:
      ft.finetune(trainer, params, examples, tc, 20, seed=0, ckpt_dir=ck, checkpoint_every=1,
                  on_step=lambda s, m: seen.update({s: m["loss"]}))
    return str(e.value), seen

  err, seen = train()
  assert err.startswith("training loss became nan at step 5; the checkpoint at step 4, the "
                        "last whose loss was finite, is kept"), err
  assert sorted(seen) == [1, 2, 3, 4, 5]
  assert Checkpointer(ck).all_steps() == [4]
  with caplog.at_level("WARNING"):
    err_again, resumed = train()  # the same command: resumes at 4, step 5 is finite again
  assert resumed == {5: seen[5]} and err_again == err
  assert ("train: an earlier run stopped at step 5, where the loss was nan; resuming from "
          "step 4, the last checkpoint whose loss was finite") in caplog.text


# --- runs cut short and resumed ----------------------------------------------------------


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  """The results of the uninterrupted short smoke run (shared by the tests below)."""
  workdir = tmp_path_factory.mktemp("faults") / "clean"
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return run_results(workdir)


def test_sigterm_stops_at_a_safe_point_exits_0_and_the_rerun_resumes_to_the_same_results(
    tmp_path, clean):
  workdir = tmp_path / "preempted"
  waits = []
  # Each rerun counts its failpoints afresh: together they preempt every kind of phase.
  for failpoint, line in [
      ("train_step:30:TERM", "preempted at iteration 0, phase pretrain, step 30 of 60"),
      ("sample_shard:1:TERM", "preempted at iteration 0, phase evaluate, step 32 of 38"),
      ("train_step:3:TERM", "preempted at iteration 1, phase train, step 3 of 6")]:
    proc = _run(workdir, failpoint, "--config.checkpoint_every=50")
    done = time.time()
    assert proc.returncode == 0, (failpoint, proc.stderr[-3000:])
    log = proc.stderr.strip().splitlines()
    assert log[-1].endswith(f"{line}; rerun the same command to resume"), (failpoint, log[-5:])
    sent = float(proc.stderr.split("SIGTERM sent at ")[1].split()[0])
    waits.append(done - sent)
    assert not (workdir / wd.LOCK_NAME).exists()
  print(f"SIGTERM to exit: {', '.join(f'{w:.1f}s' for w in waits)}")
  assert max(waits) < 10, waits  # the notice gives about 30 s
  proc = _run(workdir)
  assert proc.returncode == 0 and "resuming" in proc.stderr, proc.stderr[-3000:]
  assert run_results(workdir) == clean


def test_a_full_disk_stops_in_one_line_keeps_what_was_written_and_the_rerun_resumes(
    tmp_path, clean):
  workdir = tmp_path / "full"
  metrics0 = json.dumps(clean[0][0])
  for failpoint, what, metrics in [
      # pretraining saves at 20, 40, 60: the second save finds the disk full
      ("checkpoint_write:2:ENOSPC", f"checkpoint step 40 in {workdir}/pretrain_ckpt", 0),
      # resumed at 20: 40 is written, 60's asynchronous write (the default) finds it full
      ("checkpoint_async_write:2:ENOSPC", f"a checkpoint in {workdir}/pretrain_ckpt", 0),
      ("write_eval.jsonl:2:ENOSPC", f"{workdir}/iter_001/eval.jsonl", 1),  # iteration 1's
      ("write_metrics.jsonl:1:ENOSPC", f"{workdir}/metrics.jsonl", 1)]:
    proc = _run(workdir, failpoint, "--config.checkpoint_every=20")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (failpoint, proc.stderr[-3000:])
    assert err[-2].startswith(f"star_jax.main: error: no space left on device writing {what}; "
                              ), (failpoint, err[-3:])
    assert " MiB free there. " in err[-2] and "Traceback" not in proc.stderr
    lines = [{k: v for k, v in json.loads(line).items()
              if not k.endswith("_seconds") and not k.startswith("process_")}
             for line in open(workdir / "metrics.jsonl")] if metrics else []
    assert [json.dumps(r) for r in lines] == [metrics0][:metrics]  # earlier lines intact
    assert not (workdir / wd.LOCK_NAME).exists()
    if failpoint.startswith("checkpoint_write"):
      assert sorted(os.listdir(workdir / "pretrain_ckpt")) == ["20"]  # the one before kept
    if failpoint.startswith("checkpoint_async"):  # orbax's partial step is left behind ...
      assert sorted(os.listdir(workdir / "pretrain_ckpt")) == ["40", "60.orbax-checkpoint-tmp"]
    if failpoint.startswith("write_eval"):  # ... and the rerun resumes before it
      assert "pretrain: resuming from the checkpoint at step 40 of 60" in proc.stderr
  proc = _run(workdir)
  assert proc.returncode == 0 and "resuming" in proc.stderr, proc.stderr[-3000:]
  assert run_results(workdir) == clean


def test_a_run_whose_latest_checkpoint_is_damaged_resumes_from_the_one_before(tmp_path, clean):
  workdir = tmp_path / "damaged"
  # SIGKILL at step 50. Saves written in line: an asynchronous save of step 40 may still be
  # in flight 10 steps later on a loaded machine (its temporary directory is the other case,
  # a killed save's debris, which orbax sets aside on its own).
  proc = _run(workdir, "train_step:50", "--config.checkpoint_every=20",
              "--config.checkpoint_async=False")
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  ckpt = workdir / "pretrain_ckpt"
  assert sorted(os.listdir(ckpt)) == ["20", "40"]
  os.remove(ckpt / "40" / "commit_success.txt")  # as a copy cut short leaves it
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (f"checkpoint step 40 in {ckpt} is unusable (no commit marker commit_success.txt: the "
          "save or copy did not finish); using step 20") in proc.stderr
  assert "pretrain: resuming from the checkpoint at step 20 of 60" in proc.stderr
  assert run_results(workdir) == clean


@pytest.mark.parametrize("notices", [1, 2])
def test_a_notice_that_meets_no_safe_point_ends_the_run_when_the_grace_runs_out(
    notices, tmp_path):
  """(A GRPO policy step, a compile: no safe point.) After the grace, or at a second notice,
  the process ends as SIGKILL would end it, but gives the workdir's lock back: the rerun
  starts at once and resumes from the last checkpoints."""
  code = ("import os, signal, time\nfrom star_jax.runtime import distributed\n"
          "from star_jax.experiment.lock import WorkdirLock\n"
          f"with WorkdirLock({str(tmp_path)!r}), distributed.preemption_handling():\n"
          f"  for _ in range({notices}):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
          "    time.sleep(0.2)\n  time.sleep(60)\n")
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, env=dict(_env(), STAR_JAX_PREEMPT_GRACE_SECONDS="2"))
  assert time.time() - t0 < 30
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
  if notices == 1:
    assert "preempted: no safe point within 2s of the notice; stopping now" in proc.stderr
  else:
    assert "a second preemption notice (SIGTERM); stopping now" in proc.stderr
  assert os.listdir(tmp_path) == []  # the lock given back on the forced way out


def test_an_iteration_whose_checkpoint_is_damaged_is_done_again(tmp_path, clean):
  """A finished iteration 1 whose checkpoint lost its commit marker: the extended run sets it
  aside, drops its metrics line, does iteration 1 again (the same results) and goes on."""
  workdir = tmp_path / "run"
  assert _run(workdir).returncode == 0
  os.remove(workdir / "checkpoints" / "1" / "commit_success.txt")
  proc = _run(workdir, None, "--config.star.iterations=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "iteration 1 is done again from M_0" in proc.stderr
  assert any(d.startswith("1.unusable-") for d in os.listdir(workdir / "checkpoints"))
  metrics, files = run_results(workdir)
  clean_metrics, clean_files = clean
  assert [m["iteration"] for m in metrics] == [0, 1, 2]
  assert metrics[:2] == clean_metrics
  assert {k: v for k, v in files.items() if not k.startswith("iter_002")} == clean_files
