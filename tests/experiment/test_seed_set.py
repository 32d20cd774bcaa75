"""configs/gsm8k.py:warm's P << D split: P is official solutions, D the other questions'
answers, the held-out questions in neither (experiment.build.without_seed_set)."""

import os
import re

import pytest

from helpers.runs import load_config, write_gsm8k
from star_jax import config as config_lib, tasks
from star_jax.config import seed_data
from star_jax.experiment.build import build, hinted_seed_set, seed_set, without_seed_set
from star_jax.runtime.errors import ConfigError
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


def test_the_hinted_part_of_p_is_shown_with_the_hint_and_only_there(tmp_path):
  # pretrain.hinted_task_options: a second part of P (here 3-digit problems, which the rest
  # of P lacks), every text with the hint, so M_0 learns to read one at lengths where it has
  # no unhinted text; the rest of P is as without it, hints drawn as before.
  from star_jax.star.seed import seed_examples
  c = load_config("arithmetic_smollm2")
  c.pretrain.data = {"max_train": 40}
  c.pretrain.task_options = {"digit_counts": (10, 30)}
  plain = config_lib.load(c)
  exp = build(plain, str(tmp_path / "plain"))
  c.pretrain.hinted_task_options = {"max_digits": 3, "digit_counts": (0, 0, 8)}
  cfg = config_lib.load(c)
  before, after = seed_examples(plain, exp), seed_examples(cfg, exp)
  assert after[:len(before)] == before and len(before) == 40
  assert any("Hint" not in exp.tokenizer.decode(list(e.prompt)) for e in before)
  prompts = [exp.tokenizer.decode(list(e.prompt)) for e in after[len(before):]]
  assert len(prompts) == 8 and all("Hint" in p for p in prompts)
  assert all(re.search(r"\d{3} \+ \d{3}", p) for p in prompts), prompts[0]
  # a hinted part drawn as P itself is P's own questions: all left out
  task = tasks.get_task("arithmetic", **c.task_options.to_dict())
  c.pretrain.hinted_task_options = {"digit_counts": (10, 30)}
  assert hinted_seed_set(config_lib.load(c), task)[1] == []
  bad = c.copy_and_resolve_references()
  bad.pretrain.hinted_task_options = {"digit_count": (1,)}
  with pytest.raises(ConfigError, match="pretrain.hinted_task_options.digit_count"):
    config_lib.load(bad)

