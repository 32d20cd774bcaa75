"""The parsers on the real CommonsenseQA and GSM8K train files, where they are at hand.

The files are not part of the repository: STAR_JAX_DATA names their directory (default
../shared/data beside the checkout); the tests skip when they are absent.
"""

import decimal
import os
import re

import pytest

from helpers.runs import ROOT
from star_jax import tasks
from star_jax.data.sources import SOURCES, read_jsonl
from star_jax.tasks import gsm8k

DATA = os.environ.get("STAR_JAX_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))


def _records(name, source):
  path = os.path.join(DATA, name)
  if not os.path.exists(path):
    pytest.skip(f"{path} is not here: set STAR_JAX_DATA to the directory holding the real "
                f"train file {name} (see the README, 'Tests')")
  return read_jsonl(path, SOURCES[source].parse, "train")


def test_gsm8k_answer_parser_reads_every_gold_answer():
  """Every train example's '#### N': its normalized answer, read back from the answer phrase
  in the forms a model writes (the raw text after ####, with a dollar sign, in a sentence)."""
  records = _records("gsm8k_train.jsonl", "gsm8k")
  assert len(records) == 7473
  task = tasks.get_task("gsm8k")
  examples = [ex for r in records for ex in [tasks.Example(
      r["id"], r["question"], tasks.normalize_number(r["answer"]), {})]]
  for r, ex in zip(records, examples):
    assert ex.answer is not None and re.fullmatch(r"-?\d+(\.\d+)?", ex.answer), r["answer"]
    for text in (f" So the answer is {r['answer']}.", f" The answer is ${r['answer']}.",
                 task.completion("Some steps.", ex)):
      assert task.is_correct(task.extract_answer(text), ex), (text, ex.answer)


def test_gsm8k_support_check_passes_the_gold_solutions_and_fails_a_wrong_answer():
  """The official solutions in our rationale form (calculator annotations stripped) reach their
  own '#### N' by the support rule: 7,400 of 7,473 measured (99.0%). Of the rest, 36 end in
  something else than the answer (cents for dollars, "17 000", a final comparison, a '####' that
  disagrees with their own arithmetic) and 37 more have an equation our check reads as false
  (a unit switch "$1 / 2 = 50 cents", "25 / 1/3 = 75"). The same rationales for N + 1: 1 passes."""
  records = _records("gsm8k_train.jsonl", "gsm8k")
  task = tasks.get_task("gsm8k")
  gold = wrong = 0
  for r in records:
    answer = tasks.normalize_number(r["answer"])
    rationale = gsm8k.solution_rationale(r["solution"])
    gold += task.rationale_supports(rationale, tasks.Example(r["id"], r["question"], answer))
    off = tasks.normalize_number(str(decimal.Decimal(answer) + 1))
    wrong += task.rationale_supports(rationale, tasks.Example(r["id"], r["question"], off))
  assert gold / len(records) >= 0.985 and wrong / len(records) <= 0.001, (gold, wrong)


def test_cqa_parser_reads_every_gold_choice_back():
  records = _records("commonsenseqa_train_rand_split.jsonl", "commonsense_qa")
  assert len(records) == 9741
  task = tasks.get_task("cqa")
  for ex in task.examples(records):
    text = task.completion("A short reason.", ex)
    assert task.is_correct(task.extract_answer(text), ex), text
    assert task.predicted_label(task.extract_answer(text), ex) == ex.answer
