"""Arithmetic's length-matched few-shot exemplars (task_options.shots)."""

import re

import pytest

from star_jax import tasks
from star_jax.data import DataConfig
from star_jax.tasks import arithmetic

DATA = DataConfig(seed=0, max_train=3000, max_eval=200)
DIGITS = {"min_digits": 1, "max_digits": 5}  # task_options


def shown_problems(prompt):
  """The (a, b) of every "Input:" block of a prompt, the query's last."""
  found = re.findall(r"Input:\n([0-9 ]+) \+ ([0-9 ]+)\n", prompt)
  return [(int(a.replace(" ", "")), int(b.replace(" ", ""))) for a, b in found]


def test_default_keeps_the_two_fixed_exemplars():
  task = tasks.get_task("arithmetic", **DIGITS)
  ex = task.load("eval", DATA)[0]
  assert shown_problems(task.prompt(ex))[:-1] == [(38, 45), (706, 598)]
  assert [(s.meta["a"], s.meta["b"]) for s in task.exemplars()] == [(38, 45), (706, 598)]


def test_shots_match_the_query_length_and_stay_out_of_the_eval_partition():
  task = tasks.get_task("arithmetic", shots=4, **DIGITS)
  evals = task.load("eval", DATA)
  held_out = {(e.meta["a"], e.meta["b"]) for e in evals}
  by_digits = {}
  for ex in evals + task.load("train", DATA)[:300]:
    shown = shown_problems(task.prompt(ex))
    assert shown[-1] == (ex.meta["a"], ex.meta["b"])
    shots = shown[:-1]
    assert len(shots) == 4 and (ex.meta["a"], ex.meta["b"]) not in shots
    d = ex.meta["digits"]
    assert all(max(len(str(a)), len(str(b))) == d for a, b in shots)
    assert not any(arithmetic._in_eval_partition(a, b, 0, 0.1) for a, b in shots)
    assert not set(shots) & held_out
    by_digits.setdefault(d, set()).update(shots)
  # The same exemplars for every query of a length (5 candidates: 4, or the other 4 when
  # the query is one of them), and different ones per length.
  assert sorted(by_digits) == [1, 2, 3, 4, 5]
  assert all(4 <= len(s) <= 5 for s in by_digits.values())
  # The exemplars carry their gold scratchpads, hinted when the query is.
  ex = evals[-1]
  prompt = task.prompt(ex, hint=True)
  assert prompt.count("Hint: ") == 5 and prompt.count("</scratch>") == 4
  a, b = shown_problems(prompt)[0]
  assert arithmetic.scratchpad(a, b) in prompt
  assert task.prompt(ex, few_shot=False) == prompt_without_shots(ex)


def prompt_without_shots(ex):
  a, b = arithmetic.spaced(ex.meta["a"]), arithmetic.spaced(ex.meta["b"])
  return f"Input:\n{a} + {b}\nTarget:\n"


def test_shots_are_fixed_by_length_and_data_seed():
  first = tasks.get_task("arithmetic", shots=3, **DIGITS)
  again = tasks.get_task("arithmetic", shots=3, **DIGITS)
  ex = first.load("eval", DATA)[5]
  assert first.prompt(ex) == again.prompt(ex)
  reseeded = tasks.get_task("arithmetic", shots=3, **DIGITS).load("eval",
                                                                     DATA.replace(seed=1))
  same_len = next(e for e in reseeded if e.meta["digits"] == ex.meta["digits"])
  assert shown_problems(first.prompt(same_len))[:-1] != shown_problems(first.prompt(ex))[:-1]
  # The seed's partition: exemplars of data seed 1 are outside its own eval partition.
  assert not any(arithmetic._in_eval_partition(a, b, 1, 0.1)
                 for a, b in shown_problems(first.prompt(same_len))[:-1])
  with pytest.raises(ValueError, match="shots"):
    tasks.get_task("arithmetic", shots=-1)
