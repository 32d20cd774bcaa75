"""The STaR loop end to end: each task's :smoke config on fixture data, and its artifacts."""

import collections
import dataclasses
import json
import os

import numpy as np
import pytest

from helpers.runs import ROOT, checksums, command, load_config, read_events, write_cqa, write_gsm8k
from star_jax import star, tasks
from star_jax.config import base_config, load
from star_jax.data import DataConfig
from star_jax.runtime.errors import ConfigError
from star_jax.star import finetune as ft

ITER_KEYS = {"iteration", "eval_accuracy", "eval_n", "train_questions", "solved_by_generation",
             "solved_by_rationalization", "kept", "train_steps", "sample_seconds",
             "rationalize_seconds", "train_seconds", "eval_seconds"}


def check_artifacts(workdir, config, n_eval, hint_markers):
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


def test_arithmetic_smoke_from_the_command_line(tmp_path):
  """As a newcomer runs it: a start that fails (a wrong checkpoint path) leaves nothing, the
  corrected command runs and says where it stands, and a re-run finds nothing to do."""
  config = load_config("arithmetic")
  workdir = str(tmp_path / "run")
  smoke = f"--config={ROOT}/configs/arithmetic.py:smoke"
  code, _, err = command("main", smoke, f"--workdir={workdir}",
                         "--config.model.checkpoint=/no/such/checkpoint", cwd=tmp_path)
  assert code == 2 and "/no/such/checkpoint" in err and "Traceback" not in err
  assert not os.path.exists(workdir) and os.listdir(tmp_path) == []

  code, _, err = command("main", smoke, f"--workdir={workdir}", cwd=tmp_path)
  assert code == 0, err[-3000:]
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
  code, _, err = command("main", smoke, f"--workdir={workdir}", cwd=tmp_path)
  assert code == 0 and "nothing to do" in err
  assert checksums(workdir) == before


def test_arithmetic_smollm2_smoke(tmp_path):
  # configs/arithmetic_smollm2.py with a random tiny model: M_0 reads exemplars of the
  # query's length, M_n the bare problem; every length is scored every iteration.
  config = load_config("arithmetic_smollm2")
  workdir = str(tmp_path / "run")
  star.run(config, workdir)
  task = tasks.get_task("arithmetic", **config.task_options.to_dict())
  n_eval = len(task.load("eval", DataConfig(**config.data.to_dict())))
  metrics, kept = check_artifacts(workdir, config, n_eval, ["Hint"])
  for m in metrics:
    assert sorted(m["accuracy_by_digits"]) == ["1", "2"]
  # The pretrained tiny M_0, prompted with its exemplar, keeps rationales and trains on them
  # (measured: 7 of 32; later iterations read bare problems and may keep none).
  assert metrics[0]["pretrain_steps"] > 0
  assert metrics[1]["kept"] > 0 and metrics[1]["train_steps"] > 0 and kept


def test_cqa_smoke_on_official_schema_files(tmp_path):
  config = load_config("cqa")
  config.data.dir = str(tmp_path / "cqa")
  write_cqa(config.data.dir)
  config.data.max_eval = 0  # all 13 dev questions: not a multiple of the batch
  config.sample.batch_size = 8
  workdir = str(tmp_path / "run")
  star.run(config, workdir)
  metrics, kept = check_artifacts(workdir, config, 13, ["(CORRECT)"])
  check_kept_and_trained(metrics, kept)
  for m in metrics:  # multiple choice: what the answers name, and the likeliest choice
    records = [json.loads(line) for line in
               open(os.path.join(workdir, f"iter_{m['iteration']:03d}", "eval.jsonl"))]
    assert len(records) == m["eval_n"] == 13
    assert m["eval_accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 13)
    named = collections.Counter(r.get("label", "none") for r in records)
    assert m["eval_label_shares"] == pytest.approx({k: v / 13 for k, v in named.items()})
    assert all(r["correct"] == (r.get("label") == r["gold"]) for r in records)
    for score in ("acc", "acc_norm"):  # a share of the 13 questions, one likeliest choice each
      assert m["eval_choice_loglik_accuracy"][score] * 13 == pytest.approx(
          round(m["eval_choice_loglik_accuracy"][score] * 13))


def test_gsm8k_smoke_on_official_schema_files(tmp_path):
  config = load_config("gsm8k")
  config.data.dir = str(tmp_path / "gsm")
  write_gsm8k(config.data.dir)
  config.data.max_eval = 0
  config.sample.batch_size = 8
  workdir = str(tmp_path / "run")
  star.run(config, workdir)
  check_kept_and_trained(*check_artifacts(workdir, config, 13, ["####", "<<", "Hint"]))


def check_kept_and_trained(metrics, kept):
  """The warm-started smoke model solves train questions, and every iteration trains on them."""
  assert metrics[0]["pretrain_steps"] > 0
  assert kept and all(m["kept"] > 0 for m in metrics[1:])
  assert all(m["train_steps"] > 0 and m["train_loss"] is not None for m in metrics[1:])


@pytest.mark.parametrize("method", ["seed_only"])
def test_controls_train_on_their_own_data_with_the_star_budget(tmp_path, method):
  """A control end to end through the loop (``direct`` and both controls' data, steps and
  starting points are covered in milliseconds by tests/star/test_iteration.py)."""
  config = load_config("arithmetic")
  config.star.method, config.star.iterations = method, 1
  config.star.questions_per_iteration = 10  # STaR's sample; direct trains on all of D
  workdir = str(tmp_path / method)
  metrics = star.run(config, workdir)
  m = metrics[1]
  assert m["method"] == method and m["kept"] == 0
  assert m["train_steps"] == ft.steps_for_iteration(load(config).star, 1)
  # The seed set P: the run's data and task options, with pretrain's changes.
  seed = tasks.get_task("arithmetic", **{**config.task_options.to_dict(),
                                         **config.pretrain.task_options.to_dict()}).load(
      "train", DataConfig(**{**config.data.to_dict(), **config.pretrain.data.to_dict()}))
  questions = tasks.get_task("arithmetic", **config.task_options.to_dict()).load(
      "train", DataConfig(**config.data.to_dict()))
  assert m["train_examples"] == (len(questions) if method == "direct" else len(seed))
  assert os.path.getsize(os.path.join(workdir, "iter_001", "kept.jsonl")) == 0
  assert metrics[0] == json.loads(open(os.path.join(workdir, "metrics.jsonl")).readline())


def test_step_schedules():
  c = load(base_config()).star
  assert [ft.steps_for_iteration(c, n) for n in (1, 2, 3, 4)] == [40, 48, 58, 69]
  c = dataclasses.replace(c, steps_schedule="linear", base_steps=300, steps_increment=20)
  assert [ft.steps_for_iteration(c, n) for n in (1, 2, 5)] == [300, 320, 380]
  c = dataclasses.replace(c, steps_schedule="cubic")
  with pytest.raises(ValueError, match="steps_schedule"):
    ft.steps_for_iteration(c, 1)
  bad = base_config()
  bad.star.steps_schedule = "cubic"
  with pytest.raises(ConfigError, match="star.steps_schedule must be one of"):
    load(bad)
  with pytest.raises(ValueError, match="from 1"):
    ft.steps_for_iteration(c, 0)


def test_missing_data_files_fail_before_any_work(tmp_path):
  config = load_config("cqa")
  config.data.dir = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="train_rand_split.jsonl"):
    star.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")  # nothing written


def _saved_dtypes(workdir, n):
  import jax
  import orbax.checkpoint as ocp
  md = ocp.StandardCheckpointer().metadata(os.path.join(workdir, "checkpoints", str(n), "params"))
  return {str(x.dtype) for x in jax.tree.leaves(getattr(md, "item_metadata", md))}


def test_bfloat16_run_keeps_float32_masters_of_the_models_it_trains_on(tmp_path):
  """A bfloat16 model without restart_from_base: the pretrained M_0 and every M_n are
  checkpointed as float32 masters (each fine-tune starts from the last), and a resumed run
  trains on from them."""
  config = load_config("arithmetic")
  config.model.overrides = {**dict(config.model.overrides), "param_dtype": "bfloat16",
                            "dtype": "bfloat16"}
  config.star.method = "seed_only"  # trains every iteration, whatever the samples
  config.star.restart_from_base = False
  config.star.iterations, config.star.base_steps, config.pretrain.steps = 1, 3, 10
  workdir = str(tmp_path / "run")
  star.run(config, workdir)
  config.star.iterations = 2  # extended: iteration 2 starts from the restored M_1
  metrics = star.run(config, workdir)
  steps = [ft.steps_for_iteration(load(config).star, n) for n in (1, 2)]
  assert [m["train_steps"] for m in metrics[1:]] == steps
  for n in (0, 1, 2):
    assert _saved_dtypes(workdir, n) == {"float32"}


def test_a_bfloat16_run_at_the_papers_rate_samples_an_m1_that_moved(tmp_path, mesh1):
  """The TPU recipe's setting (bfloat16, lr 1e-6, M_n fine-tuned from M_0 and saved in
  bfloat16 for sampling): the saved M_1 differs from M_0 well beyond the few weights near
  zero that nearest rounding lets move (how closely it follows the float32 masters:
  tests/engine/test_mixed_precision.py)."""
  import jax
  import jax.numpy as jnp
  from star_jax.engine import precision
  from star_jax.experiment.models import load_model
  config = load_config("arithmetic")
  config.model.overrides = {**dict(config.model.overrides), "param_dtype": "bfloat16",
                            "dtype": "bfloat16"}
  config.star.method = "seed_only"  # trains every iteration, whatever the samples
  config.star.restart_from_base = True  # the paper's protocol: M_n is only sampled
  config.train.learning_rate, config.train.warmup_steps = 1e-6, 0
  config.star.iterations, config.star.base_steps, config.pretrain.steps = 1, 10, 0
  workdir = str(tmp_path / "run")
  star.run(config, workdir)
  m0, m1 = (jax.tree.leaves(load_model(f"{workdir}/checkpoints/{n}", mesh1).params)
            for n in (0, 1))
  assert {str(x.dtype) for x in m1} == {"bfloat16"}
  # Adam moves a weight by ~lr a step: 10 steps reach ~1e-5. Rounded to the nearest
  # bfloat16, only a weight whose half-spacing is below that can move; rounded
  # stochastically, a weight far from zero moves too, with probability |update| / spacing.
  reach = 10 * 1e-6
  far_moved = total = 0
  for a, b in zip(m0, m1):
    far = np.asarray(precision.half_spacing(a, jnp.bfloat16)) > 4 * reach
    far_moved += int(np.sum(far & (np.asarray(a, np.float32) != np.asarray(b, np.float32))))
    total += a.size
  assert far_moved > 0.005 * total  # measured: 1.65% (with train.rounding=nearest: 0)


def test_the_run_warns_when_nearest_rounding_would_drop_the_fine_tune(mesh1):
  import types
  import jax
  import jax.numpy as jnp
  from star_jax.engine import params as params_lib
  from star_jax.engine.model_config import get_preset
  _, p32 = params_lib.init_params(get_preset("tiny"), mesh1, seed=0)
  exp = types.SimpleNamespace(params=jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32))
  train = load(base_config()).train  # lr 1e-6, float32 masters, stochastic rounding
  assert ft.update_reach_check(exp, train, 40) is None
  nearest = dataclasses.replace(train, rounding="nearest")
  warning = ft.update_reach_check(exp, nearest, 40)
  assert "train.learning_rate=1e-06 x 40 steps" in warning
  assert "train.rounding=stochastic" in warning
  assert ft.update_reach_check(exp, dataclasses.replace(nearest, learning_rate=1e-2), 40) is None
  exp32 = types.SimpleNamespace(params=p32)  # a float32 model: nothing to round
  assert ft.update_reach_check(exp32, nearest, 40) is None
