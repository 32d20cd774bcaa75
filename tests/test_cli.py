"""The command line as a newcomer meets it: one clear line per mistake, nothing left behind by
a failed start."""

import os

import pytest

from helpers.runs import ROOT, command as star_jax, write_cqa

SMOKE = os.path.join(ROOT, "configs", "arithmetic.py") + ":smoke"


COMMANDS = ["main", "preflight", "plan", "generate", "verify", "export"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_exits_zero(tmp_path, module):
  code, out, err = star_jax(module, "--help", cwd=tmp_path)
  assert code == 0 and "--" in out + err


def test_the_commands_are_libraries_too_importable_in_one_process():
  # A test file (or a notebook) imports generate() and verify() side by side: their flags
  # (--checkpoint in both) are defined only when the command runs.
  import subprocess, sys
  code = "; ".join(f"import star_jax.{m}" for m in COMMANDS if m != "main")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_mistyped_key_is_one_line_naming_it_and_its_suggestion(tmp_path):
  code, _, err = star_jax("main", f"--config={SMOKE}", f"--workdir={tmp_path / 'run'}",
                          "--config.star.iteratons=3", cwd=tmp_path)
  assert code != 0
  lines = err.strip().splitlines()
  assert len(lines) <= 2 and "Traceback" not in err, err
  assert "'iteratons'" in lines[0] and "--config.star.iteratons" in lines[0]
  assert "did you mean 'iterations'?" in lines[0]
  assert not (tmp_path / "run").exists()


def test_a_config_that_cannot_work_is_one_line_naming_the_keys_before_anything_runs(tmp_path):
  # V-STaR on greedy samples, one a question: it used to run the whole loop, then end in a
  # traceback (ValueError: no training pairs)
  code, _, err = star_jax("main", f"--config={SMOKE}", f"--workdir={tmp_path / 'run'}",
                          "--config.eval.samples=4", "--config.verifier.enabled=True",
                          cwd=tmp_path)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) <= 2 and "Traceback" not in err, err
  assert "verifier.enabled" in lines[0] and "star.samples_per_question >= 2" in lines[0]
  assert "star.temperature > 0" in lines[0]
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


# A failed start, the corrected command's run, its closing lines and a re-run with nothing to
# do: tests/star/test_loop.py::test_arithmetic_smoke_from_the_command_line.
