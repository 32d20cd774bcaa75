"""The STaR loop end to end: each task's :smoke config on fixture data, and its artifacts."""

import collections
import dataclasses
import json
import os
import re

import numpy as np
import pytest

from helpers.runs import check_artifacts, load_config, write_cqa, write_gsm8k
from star_jax import star, tasks
from star_jax.config import base_config, load
from star_jax.data import DataConfig
from star_jax.runtime.errors import ConfigError
from star_jax.star import finetune as ft

def test_arithmetic_smollm2_smoke(tmp_path):
  # configs/arithmetic_smollm2.py with a random tiny model: M_0 warm-started on a seed of
  # gold scratchpads (digits written together), then STaR on the bare problems of D.
  config = load_config("arithmetic_smollm2")
  workdir = str(tmp_path / "run")
  star.run(config, workdir)
  task = tasks.get_task("arithmetic", **config.task_options.to_dict())
  n_eval = len(task.load("eval", DataConfig(**config.data.to_dict())))
  metrics, kept = check_artifacts(workdir, config, n_eval, ["Hint"])
  for m in metrics:
    assert sorted(m["accuracy_by_digits"]) == ["1", "2"]
  assert metrics[0]["pretrain_steps"] > 0 and metrics[0]["pretrain_examples"] == 160
  assert metrics[1]["kept"] > 0 and metrics[1]["train_steps"] > 0 and kept
  # What was kept and trained on is in the compact format: no spaced digits anywhere.
  assert not any(re.search(r"[0-9] [0-9]", k["rationale"] + k["answer"]) for k in kept)


def test_arithmetic_extend_smoke_opens_a_length_each_iteration(tmp_path):
  # configs/arithmetic_extend.py: a seed of 1-2 digits, D of 1-4 digits opened one length an
  # iteration from 3 (the fast unit test of what is drawn: tests/star/test_iteration.py).
  config = load_config("arithmetic_extend")
  workdir = str(tmp_path / "run")
  star.run(config, workdir)
  task = tasks.get_task("arithmetic", **config.task_options.to_dict())
  n_eval = len(task.load("eval", DataConfig(**config.data.to_dict())))
  metrics, _ = check_artifacts(workdir, config, n_eval, ["Hint"])
  for m in metrics:
    assert sorted(m["accuracy_by_digits"]) == ["1", "2", "3", "4"]
  train = task.load("train", DataConfig(**config.data.to_dict()))
  for n, top in ((1, 3), (2, 4)):
    assert metrics[n]["train_questions"] == sum(task.difficulty(ex) <= top for ex in train)
    kept = [json.loads(line) for line in open(os.path.join(workdir, f"iter_{n:03d}",
                                                           "kept.jsonl"))]
    assert all(len(k["answer"].replace(" ", "")) <= top + 1 for k in kept)


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


def test_a_control_runs_in_the_tpu_recipes_precision_and_its_m1_carries_the_update(tmp_path,
                                                                                     mesh1):
  """The seed-only control end to end through the loop (``direct`` and both controls' data,
  steps and starting points are covered in milliseconds by tests/star/test_iteration.py), in
  the TPU recipe's setting: bfloat16, the paper's lr 1e-6, M_n fine-tuned from M_0 and saved
  in bfloat16 to be sampled. The saved M_1 moved where rounding to the nearest bfloat16 could
  not have moved it (how closely it follows the float32 masters:
  tests/engine/test_mixed_precision.py)."""
  import jax
  import jax.numpy as jnp
  from star_jax.engine import precision
  from star_jax.experiment.models import load_model
  method = "seed_only"
  config = load_config("arithmetic")
  config.star.method, config.star.iterations = method, 1
  config.star.questions_per_iteration = 10  # STaR's sample; direct trains on all of D
  config.model.overrides = {**dict(config.model.overrides), "param_dtype": "bfloat16",
                            "dtype": "bfloat16"}
  config.star.restart_from_base = True  # the paper's protocol: M_n is only sampled
  config.train.learning_rate, config.train.warmup_steps = 1e-6, 0
  config.star.base_steps, config.pretrain.steps = 10, 0
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

  m0, m1 = (jax.tree.leaves(load_model(f"{workdir}/checkpoints/{n}", mesh1).params)
            for n in (0, 1))
  assert {str(x.dtype) for x in m1} == {"bfloat16"}
  # Adam moves a weight by ~lr a step: 10 steps reach ~1e-5. Rounded to the nearest
  # bfloat16, only a weight whose half-spacing is below that can move; rounded
  # stochastically (train.rounding's default), a weight far from zero moves too, with
  # probability |update| / spacing.
  reach = 10 * 1e-6
  far_moved = total = 0
  for a, b in zip(m0, m1):
    far = np.asarray(precision.half_spacing(a, jnp.bfloat16)) > 4 * reach
    far_moved += int(np.sum(far & (np.asarray(a, np.float32) != np.asarray(b, np.float32))))
    total += a.size
  assert far_moved > 0.005 * total  # measured: 1.65% (with train.rounding=nearest: 0)


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


# A config that can only fail late, or sample nothing useful: (keys set, keys the refusal names)
CANNOT_WORK = [
    # V-STaR with one greedy sample a question: no question can have a right and a wrong one
    ({"eval.samples": 4, "verifier.enabled": True},
     ["star.samples_per_question >= 2", "star.temperature > 0"]),
    ({"verifier.enabled": True, "star.temperature": 0.7}, ["star.samples_per_question >= 2"]),
    ({"verifier.enabled": True, "star.method": "bstar"}, ["star.samples_per_question >= 2"]),
    ({"verifier.enabled": True, "star.method": "grpo", "star.samples_per_question": 4,
      "star.temperature": 1.0}, ["star.method=grpo", "star.method to star"]),
    ({"verifier.enabled": True, "star.method": "direct"}, ["star.method=direct"]),
    # k samples of one greedy text
    ({"star.samples_per_question": 4}, ["star.temperature > 0", "star.samples_per_question=1"]),
    ({"star.method": "rest_em", "star.samples_per_question": 4, "star.temperature": 0.7,
      "star.top_k": 1}, ["star.top_k != 1"]),
    ({"eval.samples": 4, "eval.temperature": 0.0}, ["eval.temperature > 0", "eval.samples=0"]),
    ({"eval.samples": -1}, ["eval.samples"]),
    # values the sampler refuses only when it first samples
    ({"star.temperature": -0.5}, ["star.temperature"]),
    ({"star.method": "trice", "star.temperature": 1.0, "star.top_p": 0.0}, ["star.top_p"]),
    # every group all right or all wrong: no advantage, no update
    ({"star.method": "grpo", "star.samples_per_question": 4, "star.temperature": 1.0,
      "star.top_k": 1}, ["star.top_k != 1"]),
    # bstar's own keys, refused once its model was built
    ({"star.method": "bstar", "star.bstar_temperatures": (0.0, 0.7)},
     ["star.bstar_temperatures"]),
    ({"star.method": "bstar", "star.bstar_thresholds": (0.5,)}, ["star.bstar_thresholds"]),
]


@pytest.mark.parametrize("keys,named", CANNOT_WORK, ids=lambda x: str(x)[:60])
def test_a_config_that_cannot_work_is_refused_in_one_line_before_anything_runs(
    tmp_path, monkeypatch, keys, named):
  from star_jax.star import loop
  monkeypatch.setattr(loop, "check", lambda cfg: pytest.fail("the run went past the checks"))
  c = load_config("arithmetic", "smoke")
  for key, value in keys.items():
    group, name = key.split(".")
    setattr(getattr(c, group), name, value)
  with pytest.raises(ConfigError) as e:
    star.run(c, tmp_path / "run")
  assert "\n" not in str(e.value) and all(k in str(e.value) for k in named), str(e.value)
  assert not (tmp_path / "run").exists()


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
