"""configs/gsm8k.py:warm's P << D split: P is official solutions, D the other questions'
answers, the held-out questions in neither (experiment.build.without_seed_set)."""

import os

from helpers.runs import load_config, write_gsm8k
from star_jax import config as config_lib, tasks
from star_jax.config import seed_data
from star_jax.experiment.build import build, without_seed_set
from star_jax.tasks.gsm8k import solution_rationale


def _warm(tmp_path, **changes):
  c = load_config("gsm8k", "warm")
  write_gsm8k(str(tmp_path), n_train=40)
  c.data.train_file = os.path.join(str(tmp_path), "train.jsonl")
  c.data.holdout, c.data.use_tfds, c.data.download = 8, False, False
  c.pretrain.data = {"max_train": 10}
  for k, v in changes.items():
    setattr(c.pretrain, k, v)
  return config_lib.load(c)


def test_d_leaves_out_the_seed_set_and_the_held_out_questions(tmp_path):
  cfg = _warm(tmp_path)
  task = tasks.get_task("gsm8k")
  train, held_out = task.load("train", cfg.data), task.load("eval", cfg.data)
  p = task.load("train", seed_data(cfg))
  d = without_seed_set(cfg, task, train)
  assert len(train) == 32 and len(p) == 10 and len(d) == 22
  qs = lambda exs: {ex.question for ex in exs}  # noqa: E731
  assert not qs(d) & qs(p) and not qs(held_out) & (qs(d) | qs(p))
  assert qs(d) | qs(p) == qs(train)


def test_the_seed_set_trains_on_the_official_solutions(tmp_path):
  cfg = _warm(tmp_path)
  ex = tasks.get_task("gsm8k").load("train", seed_data(cfg))[0]
  gold = tasks.get_task("gsm8k").gold_rationale(ex)
  assert gold == solution_rationale(ex.meta["solution"]) and "<<" not in gold
  task = tasks.get_task("gsm8k")
  assert task.rationale_supports(gold, ex) and task.completion(gold, ex).startswith(f" {gold} ")


def test_build_draws_d_without_p_only_when_disjoint(tmp_path):
  # The smoke model (a random tiny one, a tokenizer trained on the data): build's train set.
  c = load_config("gsm8k")
  write_gsm8k(str(tmp_path), n_train=40)
  c.data.dir, c.data.max_train = str(tmp_path), 0
  c.pretrain.data = {"max_train": 10}
  sizes = []
  for disjoint in (False, True):
    c.pretrain.disjoint = disjoint
    sizes.append(len(build(config_lib.load(c), str(tmp_path / f"run{disjoint}")).train_set))
  assert sizes == [40, 30]
