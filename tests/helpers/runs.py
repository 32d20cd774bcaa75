"""Run configs and fixture data files in the official formats."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ["river", "ocean", "house", "garden", "school", "market", "forest", "kitchen", "office",
         "library", "bridge", "mountain", "desert", "island", "museum"]


def config_module(task):
  """configs/<task>.py as a module."""
  spec = importlib.util.spec_from_file_location(task, os.path.join(ROOT, "configs", f"{task}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(task, variant="smoke"):
  return config_module(task).get_config(variant)


def write_cqa(d, n_train=30, n_dev=13):
  rng = np.random.default_rng(0)
  os.makedirs(d, exist_ok=True)
  for name, n in (("train_rand_split.jsonl", n_train), ("dev_rand_split.jsonl", n_dev)):
    with open(os.path.join(d, name), "w") as f:
      for i in range(n):
        words = rng.choice(WORDS, 5, replace=False)
        f.write(json.dumps({
            "answerKey": "ABCDE"[i % 5], "id": f"{name[:3]}{i}",
            "question": {"question_concept": words[0],
                         "stem": f"Where would you find a {words[0]} near a {words[1]}?",
                         "choices": [{"label": l, "text": w} for l, w in zip("ABCDE", words)]}
        }) + "\n")


def letters_example():
  """One CQA question, "Where do letters go?", gold A (mailbox), as the cqa task reads it."""
  from star_jax import tasks
  return tasks.get_task("cqa").examples([{
      "id": "q", "question": "Where do letters go?", "answer_key": "A",
      "choice_labels": list("ABCDE"), "concept": "letter", "index": 0,
      "choice_texts": ["mailbox", "oven", "sky", "sea", "car"]}])[0]


def write_gsm8k(d, n_train=30, n_test=13):
  os.makedirs(d, exist_ok=True)
  for name, n in (("train.jsonl", n_train), ("test.jsonl", n_test)):
    with open(os.path.join(d, name), "w") as f:
      for i in range(n):
        a, b = 3 + i, 7 + 2 * i
        f.write(json.dumps({
            "question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
            "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"
        }) + "\n")


def read_events(directory):
  """{tag: [(step, value)]} of the TensorBoard event files in ``directory`` (text: its string)."""
  import glob
  import struct

  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    data, i = open(path, "rb").read(), 0
    while i < len(data):
      (n,) = struct.unpack("Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4  # length, its crc, the record, its crc
      for v in event.summary.value:
        value = v.simple_value if v.HasField("simple_value") else (
            v.tensor.string_val[0].decode() if v.tensor.string_val else None)
        out.setdefault(v.tag, []).append((event.step, value))
  return out


def run_results(workdir):
  """A run's metrics.jsonl without wall-clock and process (``process_*``) fields, plus every
  kept/eval artifact: what two runs that should be the same (resumed, extended,
  uninterrupted) are compared on."""
  metrics = [{k: v for k, v in json.loads(line).items()
              if not k.endswith("_seconds") and not k.startswith("process_")}
             for line in open(os.path.join(workdir, "metrics.jsonl"))]
  files = {}
  for d in sorted(os.listdir(workdir)):
    if d.startswith("iter_"):
      for name in sorted(os.listdir(os.path.join(workdir, d))):
        text = open(os.path.join(workdir, d, name)).read()
        if name == "policy_steps.jsonl":  # a policy step's record times its phases
          text = [{k: v for k, v in json.loads(line).items() if not k.endswith("_seconds")}
                  for line in text.splitlines()]
        files[f"{d}/{name}"] = text
  return metrics, files


def run_main(cmd, workdir, failpoint=None, *args):
  """``cmd`` (``python -m star_jax.main ...``) on ``workdir`` in a fresh process on one CPU
  device, as a user runs it, killed (or stopped) at ``failpoint`` (``STAR_JAX_FAILPOINT``)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env.pop("STAR_JAX_FAILPOINT", None)
  if failpoint:
    env["STAR_JAX_FAILPOINT"] = failpoint
  return subprocess.run(list(cmd) + [f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def command(module, *args, cwd, env=None, timeout=900):
  """``python -m star_jax.<module> args`` in ``cwd``, as a user types it: (exit code, stdout,
  stderr)."""
  p = subprocess.run([sys.executable, "-m", f"star_jax.{module}", *args], cwd=cwd,
                     capture_output=True, text=True, timeout=timeout,
                     env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
  return p.returncode, p.stdout, p.stderr


def checksums(directory):
  """{relative path: sha256} of every file below ``directory``."""
  out = {}
  for d, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(d, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, directory)] = hashlib.sha256(fh.read()).hexdigest()
  return out


ITER_KEYS = {"iteration", "eval_accuracy", "eval_n", "train_questions", "solved_by_generation",
             "solved_by_rationalization", "kept", "train_steps", "sample_seconds",
             "rationalize_seconds", "train_seconds", "eval_seconds"}


def check_artifacts(workdir, config, n_eval, hint_markers):
  """A finished run's metrics, eval and kept files agree with each other and its config;
  returns (metrics, every kept record)."""
  from star_jax.config import load
  from star_jax.star import finetune as ft
  star_cfg = load(config).star
  metrics = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [m["iteration"] for m in metrics] == list(range(config.star.iterations + 1))
  assert {"iteration", "eval_accuracy", "eval_n"} <= set(metrics[0])
  for m in metrics[1:]:
    assert ITER_KEYS <= set(m), ITER_KEYS - set(m)
    assert m["train_steps"] in (0, ft.steps_for_iteration(star_cfg, m["iteration"]))
  for m in metrics:
    assert m["eval_n"] == n_eval  # every eval question scored, remainder batch included
    ev = [json.loads(l) for l in open(os.path.join(workdir, f"iter_{m['iteration']:03d}",
                                                   "eval.jsonl"))]
    assert len(ev) == n_eval == len({r["id"] for r in ev})
    assert {"id", "prediction", "gold", "correct", "text"} <= set(ev[0])
    assert m["eval_accuracy"] == pytest.approx(np.mean([r["correct"] for r in ev]))
  kept_all = []
  for m in metrics[1:]:
    kept = [json.loads(l) for l in open(os.path.join(workdir, f"iter_{m['iteration']:03d}",
                                                     "kept.jsonl"))]
    assert len(kept) == m["kept"]
    for k in kept:
      assert set(k) == {"id", "question", "rationale", "answer", "source"}
      assert k["source"] in ("generation", "rationalization")
      assert not any(h in k["rationale"] for h in hint_markers), k
    kept_all += kept
  with open(os.path.join(workdir, "accuracy.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert json.load(open(os.path.join(workdir, "config.json")))["task"] == config.task
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(config.star.iterations)))
  return metrics, kept_all
