"""The pre-flight: what the first STaR iteration would see, and a verdict that follows it."""

import json
import os
import subprocess
import sys

from helpers.runs import ROOT, letters_example, load_config
from star_jax import preflight, tasks
from star_jax.star.rollout import Generation


def test_preflight_of_the_smoke_model_finds_the_lengths_it_cannot_open(tmp_path):
  # The smoke base model is pretrained on one-digit problems only.
  config = load_config("arithmetic")
  report = preflight.run(config, str(tmp_path), questions=48, samples=2)
  by = report["by_digits"]
  assert by["1"]["keepable"] > 0.5 and by["2"]["keepable"] == by["3"]["keepable"] == 0
  assert report["keepable"] == sum(b["keepable"] * b["questions"] for b in by.values()) / 48
  assert report["verdict"].startswith("STaR can start")
  assert "no keepable rationale at 2, 3" in report["verdict"]
  assert "pass@3" in preflight.format_report(report)
  # The smoke model writes its scratchpad on every answer
  assert report["reasoned_share"] == 1.0 and report["direct_accuracy"] is None
  assert "without one: 0% (right: -)" in preflight.format_report(report)


def test_reasoned_split_counts_direct_answers_apart():
  task = tasks.get_task("cqa")
  ex = letters_example()
  texts = [" The answer is mailbox.", " Ovens bake. Therefore, the answer is oven.",
           " Letters are posted. Therefore, the answer is mailbox.", " The answer is sky."]
  gens = [Generation(ex, [t], [task.extract_answer(t)],
                     [task.is_correct(task.extract_answer(t), ex)]) for t in texts]
  assert preflight.reasoned_split(task, gens) == {
      "reasoned": 2, "reasoned_share": 0.5, "reasoned_accuracy": 0.5, "direct_accuracy": 0.5}


def _report(**kw):
  base = {"questions": 200, "samples": 4, "chance_accuracy": 0.2, "pass_at_1": 0.21,
          "pass_at_5": 0.6, "keepable": 0.7, "rationalization_success": 0.3}
  return {**base, **kw}


def test_verdicts():
  assert preflight.verdict(_report(), 4).startswith("STaR is not expected to take off")
  assert "not above chance (20%" in preflight.verdict(_report(), 4)
  assert preflight.verdict(_report(pass_at_1=0.35), 4).startswith("STaR can start")
  assert preflight.verdict(_report(keepable=0.0), 4).startswith("STaR cannot start")
  # pass@1 above chance, carried by direct answers: the reasoned ones are at chance
  carried = _report(pass_at_1=0.35, reasoned=120, reasoned_accuracy=0.21)
  assert preflight.verdict(carried, 4).startswith("STaR is not expected to take off: answers "
                                                  "that come with a rationale are right 21.0%")
  assert preflight.verdict({**carried, "reasoned_accuracy": 0.4}, 4).startswith("STaR can")
  open_task = _report(chance_accuracy=0.0, pass_at_1=0.02, keepable=0.05)
  assert preflight.verdict(open_task, 4).startswith("STaR can start: 5%")


def test_preflight_command_prints_the_table_and_a_json_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "star_jax.preflight", "--config=configs/arithmetic.py:smoke",
       "--questions=16", "--samples=1", "--config.pretrain.steps=20", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      # jax's own choice of platforms (conftest sets cpu), past libtpu's one-process lock,
      # which hides its start-up errors while another process holds it
      env={**{k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"},
           "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  # a CPU host with the [tpu] extra installed: no libtpu start-up errors (runtime/cli.py)
  assert "TPU_ACCELERATOR_TYPE" not in proc.stderr and "E0000" not in proc.stderr
  # a warm start can take minutes: its progress shows on stderr
  assert "pretraining M_0 on the seed set" in proc.stderr
  lines = proc.stdout.strip().splitlines()
  report = json.loads(lines[-1])
  assert lines[0].startswith("pre-flight: arithmetic, pretrained for 20 steps, 16 train "
                             "questions, greedy + 1 samples at T=0.7")
  assert report["questions"] == 16 and lines[-2] == "verdict: " + report["verdict"]
  rows = {ln.split("|")[0].strip(): [c.strip() for c in ln.split("|")[1:]] for ln in lines
          if ln.count("|") == 6 and not ln.strip().startswith("|")}
  assert rows["all"][0] == "16" and rows["all"][-1] == f"{100 * report['keepable']:.1f}%"
  assert set(rows) - {"all", ""} == set(report["by_digits"])  # one row per digit count
  assert sum(int(rows[d][0]) for d in report["by_digits"]) == 16
  # the run of the same config in the workdir starts from the pre-flight's warm start
  run = subprocess.run(
      [sys.executable, "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke",
       "--config.pretrain.steps=20", "--config.star.iterations=0", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "pretrain: resuming from the checkpoint at step 20 of 20" in run.stderr


def test_the_report_says_how_many_right_answers_the_support_check_dropped():
  report = {**_report(task="gsm8k", model="m", temperature=0.7, verdict="STaR can start",
                      chance_accuracy=0.0, keepable_by_generation=0.03),
            "unsupported": {"generation": 1, "rationalization": 37}, "require_supported": True}
  text = preflight.format_report(report)
  assert ("right answers whose rationale does not reach them (dropped): 1 generated, "
          "37 hinted samples") in text
  off = preflight.format_report({**report, "require_supported": False})
  assert "(kept: require_supported off)" in off
  clean = preflight.format_report({**report, "unsupported": {"generation": 0,
                                                             "rationalization": 0}})
  assert "does not reach" not in clean
