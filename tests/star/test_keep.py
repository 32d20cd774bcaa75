"""What STaR keeps from its samples, and the RL-STaR diagnostics of the eval generations."""

import importlib.util
import os

import pytest

from helpers.runs import ROOT, letters_example
from star_jax import tasks
from star_jax.star import diagnostics, keep
from star_jax.star.rollout import Generation
from star_jax.tasks import arithmetic


def _gen(task, ex, texts):
  preds = [task.extract_answer(t) for t in texts]
  return Generation(ex, texts, preds, [task.is_correct(p, ex) for p in preds])


def test_keep_drops_hint_copies_and_duplicates_and_counts_them():
  task = tasks.get_task("arithmetic")
  a, b, c = (task.make_example(457, 68, "a"), task.make_example(12, 34, "b"),
             task.make_example(99, 1, "c"))
  true_a = "\n".join(arithmetic.scratchpad_lines(457, 68))
  copied = task.completion(true_a.replace("0 5 2 5", "0 5 1 5"), a)  # right answer, wrong pad
  gens = [_gen(task, a, [copied, task.completion(true_a, a), task.completion(true_a, a)]),
          _gen(task, b, [task.completion("\n".join(arithmetic.scratchpad_lines(12, 34)), b)]),
          _gen(task, c, ["<scratch>\n9 9 + 1 , C: 0\n</scratch>\n1 0 1\n\n"])]
  out = keep.keep(task, gens, "rationalization", limit=4, require_supported=True)
  assert [r["rationale"] for r in out.records] == [true_a, "\n".join(
      arithmetic.scratchpad_lines(12, 34))]
  assert out.solved == {"a", "b"} and [ex.id for ex in out.failed] == ["c"]
  assert out.unsupported == 1 and {r["source"] for r in out.records} == {"rationalization"}
  loose = keep.keep(task, gens, "generation", limit=4, require_supported=False)
  assert len(loose.records) == 3 and loose.unsupported == 1
  by_id = {ex.id: ex for ex in (a, b, c)}
  assert keep.wrong_step_share(task, by_id, loose.records) == pytest.approx(1 / 3)
  assert keep.wrong_step_share_by_source(task, by_id, loose.records) == {
      "generation": pytest.approx(1 / 3), "rationalization": None}


def test_keep_drops_a_right_answer_given_without_a_rationale():
  """SmolLM2 on CQA: a third of its right answers were "Therefore, the answer is X." alone;
  trained on, they teach M_n to answer without reasoning. A worded rationale is kept."""
  task = tasks.get_task("cqa")
  ex = letters_example()
  gens = [_gen(task, ex, [" Therefore, the answer is mailbox.\n\n",
                          " Letters go in a mailbox. Therefore, the answer is mailbox.\n\n"])]
  out = keep.keep(task, gens, "generation", limit=4, require_supported=True)
  assert [r["rationale"] for r in out.records] == ["Letters go in a mailbox."]
  assert out.unsupported == 1
  only_direct = [_gen(task, ex, [" Therefore, the answer is mailbox.\n\n"])]
  assert keep.keep(task, only_direct, "generation", 1, require_supported=True).failed == [ex]


def test_rl_star_estimates_from_right_prefixes():
  task = tasks.get_task("arithmetic")
  ex = task.make_example(457, 68, "a")  # 5 true steps
  true = list(arithmetic.scratchpad_lines(457, 68))
  fields = diagnostics.step_fields(task, task.completion("\n".join(true), ex), ex)
  assert fields == {"step_accuracy": 1.0, "prefix_steps": 5, "true_steps": 5}
  wrong = true[:2] + ["junk"] + true[3:]
  assert diagnostics.step_fields(task, "\n".join(wrong), ex)["prefix_steps"] == 2
  # Two right chains and one wrong at its third step: 5 + 5 + 2 right of 5 + 5 + 3 attempted.
  rows = [dict(fields, correct=True, difficulty=3), dict(fields, correct=True, difficulty=3),
          dict(fields, prefix_steps=2, correct=False, difficulty=3)]
  got = diagnostics.rl_star(task, rows)
  alpha = 12 / 13
  assert got["3"]["step_accuracy"] == pytest.approx(alpha)
  delta = (10 * alpha - 1) / 9
  assert got["3"]["delta"] == pytest.approx(delta)
  assert got["3"]["predicted_accuracy"] == pytest.approx(0.1 + 0.9 * delta ** 5)
  assert got["3"]["accuracy"] == pytest.approx(2 / 3) and got["3"]["steps"] == 5
  assert diagnostics.rl_star(tasks.get_task("cqa"), rows) == {}


def test_gsm8k_config_keeps_only_rationales_that_reach_the_answer():
  """configs/gsm8k.py requires support, so a hinted sample that only copies the hint into its
  answer line after a wrong last step is dropped and counted."""
  spec = importlib.util.spec_from_file_location("_gsm8k_config",
                                                os.path.join(ROOT, "configs", "gsm8k.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  task = tasks.get_task(config.task)
  ex = tasks.Example("g", "A class has 24 students; a third walk. How many ride the bus?", "16")
  good = " 24 / 3 = 8 walk, so 24 - 8 = 16 ride the bus. The answer is 16.\n\n"
  copied = " 24 * 3 = 72 walk, so 72 - 8 = 64 ride the bus. The answer is 16.\n\n"
  out = keep.keep(task, [_gen(task, ex, [copied, good])], "rationalization", limit=4,
                  require_supported=config.star.require_supported)
  assert [r["rationale"] for r in out.records] == ["24 / 3 = 8 walk, so 24 - 8 = 16 ride the bus."]
  assert out.unsupported == 1
  only_copied = keep.keep(task, [_gen(task, ex, [copied])], "rationalization", limit=4,
                          require_supported=config.star.require_supported)
  assert not only_copied.records and [e.id for e in only_copied.failed] == ["g"]
