"""The command line as a newcomer meets it: one clear line per mistake, nothing left behind by
a failed start, a run that says where it stands and leaves a finished run alone."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from helpers.runs import ROOT, write_cqa

SMOKE = os.path.join(ROOT, "configs", "arithmetic.py") + ":smoke"


def star_jax(module, *args, cwd, env=None):
  """``python -m star_jax.<module> args`` in ``cwd``: (exit code, stdout, stderr)."""
  p = subprocess.run([sys.executable, "-m", f"star_jax.{module}", *args], cwd=cwd,
                     capture_output=True, text=True, timeout=900,
                     env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
  return p.returncode, p.stdout, p.stderr


def checksums(directory):
  out = {}
  for d, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(d, f)
      out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


@pytest.mark.parametrize("module", ["main", "preflight", "plan", "generate"])
def test_help_exits_zero(tmp_path, module):
  code, out, err = star_jax(module, "--help", cwd=tmp_path)
  assert code == 0 and "--" in out + err


def test_a_mistyped_key_is_one_line_naming_it_and_its_suggestion(tmp_path):
  code, _, err = star_jax("main", f"--config={SMOKE}", f"--workdir={tmp_path / 'run'}",
                          "--config.star.iteratons=3", cwd=tmp_path)
  assert code != 0
  lines = err.strip().splitlines()
  assert len(lines) <= 2 and "Traceback" not in err, err
  assert "'iteratons'" in lines[0] and "--config.star.iteratons" in lines[0]
  assert "did you mean 'iterations'?" in lines[0]
  assert not (tmp_path / "run").exists()


def test_traceback_flag_brings_the_traceback_back(tmp_path):
  code, _, err = star_jax("main", f"--config={SMOKE}", f"--workdir={tmp_path / 'run'}",
                          "--config.model.checkpoint=/no/such/checkpoint", "--traceback",
                          cwd=tmp_path)
  assert code != 0 and "Traceback" in err and "CheckpointError" in err


@pytest.mark.parametrize("args,says", [
    (["--config=configs/arithmetc.py"], "cannot read config file"),
    ([f"--config={ROOT}/configs/arithmetic.py:smok"], "unknown variant 'smok'"),
    ([f"--config={SMOKE}", "--config.task_options.max_digit=3"], "'max_digit'"),
])
def test_bad_config_files_and_variants_are_one_line(tmp_path, args, says):
  code, _, err = star_jax("main", *args, f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
  assert code == 2 and says in err and "Traceback" not in err, err
  assert len(err.strip().splitlines()) <= 2


def test_a_malformed_data_file_leaves_workdir_and_current_directory_as_they_were(tmp_path):
  data = tmp_path / "cqa"
  write_cqa(str(data))
  with open(data / "train_rand_split.jsonl", "a") as f:
    f.write("{not json\n")
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  cqa = os.path.join(ROOT, "configs", "cqa.py") + ":smoke"
  code, _, err = star_jax("main", f"--config={cqa}", f"--workdir={tmp_path / 'run'}",
                          f"--config.data.dir={data}", cwd=cwd)
  assert code == 2 and "train_rand_split.jsonl:31:" in err and "Traceback" not in err, err
  assert not (tmp_path / "run").exists() and os.listdir(cwd) == []
  assert not (data / "tfds").exists()  # no TFDS skeleton from the failed build


def test_a_failed_start_leaves_nothing_then_the_run_reports_and_a_rerun_has_nothing_to_do(
    tmp_path):
  workdir = tmp_path / "run"
  code, _, err = star_jax("main", f"--config={SMOKE}", f"--workdir={workdir}",
                          "--config.model.checkpoint=/no/such/checkpoint", cwd=tmp_path)
  assert code == 2 and "/no/such/checkpoint" in err and "Traceback" not in err
  assert not workdir.exists()

  code, _, err = star_jax("main", f"--config={SMOKE}", f"--workdir={workdir}", cwd=tmp_path)
  assert code == 0, err
  log = err.strip().splitlines()
  assert "pretraining M_0 on the seed set" in err and "iteration 1: sampling rationales" in err
  assert "iter 1 generate: " in err  # progress lines in a log file, not a TTY bar
  assert "finished: 2 iterations" in log[-2] and f"results in {workdir}" in log[-1]
  assert "metrics.jsonl" in log[-1] and "tensorboard" in log[-1]
  assert len(open(workdir / "metrics.jsonl").readlines()) == 3
  assert json.load(open(workdir / "config.json"))["task_options"]["max_digits"] == 3

  before = checksums(workdir)
  code, _, err = star_jax("main", f"--config={SMOKE}", f"--workdir={workdir}", cwd=tmp_path)
  assert code == 0 and "nothing to do" in err
  assert checksums(workdir) == before
