"""configs/arithmetic_extend.py sizes its rows from what its curriculum draws: no kept text is
too long to train on in any round, and no completion the eval asks for is cut."""

import pytest

from helpers.runs import config_module, load_config
from star_jax import config as config_lib, tasks
from star_jax.data.data_config import DataConfig
from star_jax.experiment.build import tokenizer_texts
from star_jax.tokenizer import CharTokenizer


@pytest.mark.parametrize("variant", ["", "4x", "control", "right_aligned", "smoke"])
def test_every_rounds_longest_text_fits_its_row_and_completion(variant):
  c = load_config("arithmetic_extend", variant)
  task = tasks.get_task("arithmetic", c.star.max_new_tokens, **c.task_options.to_dict())
  data = DataConfig(**c.data.to_dict())
  train, held_out = task.load("train", data), task.load("eval", data)
  longest = {}  # per digit count, the train question with the longest gold text
  tok = CharTokenizer.from_texts(tokenizer_texts(task, train[:50] + held_out),
                                 pieces=list(c.tokenizer.pieces))
  for ex in train:
    d = task.difficulty(ex)
    size = len(task.completion(task.gold_rationale(ex), ex))
    if d not in longest or size > longest[d][0]:
      longest[d] = (size, ex)

  def row(ex):  # what batching.pack must hold: prompt + completion, less the shifted token
    prompt = tok.encode_prompt(task.prompt(ex, few_shot=c.star.few_shot))
    return len(prompt) + len(tok.encode(task.completion(task.gold_rationale(ex), ex))) - 1

  star = config_lib.load(c).star
  for n in range(1, star.iterations + 1):
    top = star.curriculum_top(n)
    drawn = [d for d in longest if d <= top]
    for d in drawn:
      assert row(longest[d][1]) <= c.train.seq_len, (variant, n, d)
  if star.curriculum_step or star.curriculum:  # the last draws the longest (control: seed's)
    assert max(drawn) == c.task_options.max_digits
  for ex in held_out:  # a right completion of every held-out length is never cut
    completion = tok.encode(task.completion(task.gold_rationale(ex), ex))
    assert len(completion) <= task.completion_limit(ex, tok) <= star.max_new_tokens, (
        variant, task.difficulty(ex))
    hinted = tok.encode_prompt(task.prompt(ex, hint=True, few_shot=star.few_shot_rationalization))
    assert len(hinted) + star.max_new_tokens <= c.model.overrides.max_seq_len
  assert {task.difficulty(ex) for ex in held_out} == set(
      range(c.task_options.eval_min_digits, c.task_options.eval_max_digits + 1))


def test_limits_are_computed_from_the_lengths_not_hand_set():
  ext = config_module("arithmetic_extend")
  c = ext.get_config()
  seq_len, new_tokens = c.train.seq_len, c.star.max_new_tokens
  c.task_options.max_digits += 2  # two more digits drawn and evaluated: both limits grow
  c.task_options.eval_max_digits += 2
  ext.size_limits(c)
  assert c.train.seq_len > seq_len and c.star.max_new_tokens > new_tokens
