"""Task formats, hints, answer extraction and the arithmetic generator."""

import json
import random

import numpy as np
import pytest

from star_jax import tasks
from star_jax.data import DataConfig
from star_jax.runtime.errors import ConfigError
from star_jax.tasks import arithmetic
from star_jax.tasks.arithmetic import ArithmeticTask

CHOICES = ("ocean", "river", "desert", "kitchen sink", "cloud")


def write_cqa(d, n_train=20, n_dev=7):
  def line(i, key):
    return json.dumps({"answerKey": key, "id": f"q{i}", "question": {
        "question_concept": "water", "stem": f"Where does water {i} flow?",
        "choices": [{"label": l, "text": t} for l, t in zip("ABCDE", CHOICES)]}})

  (d / "train_rand_split.jsonl").write_text(
      "\n".join(line(i, "ABCDE"[i % 5]) for i in range(n_train)) + "\n")
  (d / "dev_rand_split.jsonl").write_text("\n".join(line(1000 + i, "B") for i in range(n_dev)))


SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def write_gsm8k(d, n_train=6):
  rows = [{"question": f"Natalia sold clips to {i} friends. How many clips?", "answer": SOLUTION}
          for i in range(n_train)]
  (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  test = {"question": "How much did she earn?",
          "answer": "She earned 1,000 + 234 = 1,234.\n#### 1,234"}
  (d / "test.jsonl").write_text(json.dumps(test) + "\n")


def cfg(d=None, **kw):
  """The data keys (``max_train``/``max_eval`` 0: all)."""
  base = dict(dir=str(d) if d else "", download=False, seed=0, max_train=0, max_eval=0)
  return DataConfig(**{**base, **kw})


@pytest.fixture
def cqa_task():
  """The paper's layout: choices in dataset order, "text (label)" answers."""
  return tasks.get_task("cqa", shuffle_choices=False, label_in_answer=True)


@pytest.fixture
def cqa_ex():
  return tasks.Example(id="x", question="Where does a fish live?", answer="B",
                       meta={"choices": tuple(zip("ABCDE", CHOICES))})


@pytest.fixture
def gsm_ex():
  return tasks.Example(id="g", question="How many clips in total?", answer="72",
                       meta={"solution": SOLUTION})


# --- registry -------------------------------------------------------------------------------


def test_registry_and_user_tasks():
  assert set(tasks.available_tasks()) >= {"cqa", "gsm8k", "arithmetic"}
  assert isinstance(tasks.get_task("gsm8k"), tasks.Gsm8kTask)
  assert tasks.get_task("cqa", max_new_tokens=7).max_new_tokens == 7
  with pytest.raises(ValueError, match="unknown task 'cqa2'.*arithmetic, cqa, gsm8k"):
    tasks.get_task("cqa2")
  # A user task by import path, without registering it.
  assert isinstance(tasks.get_task("star_jax.tasks.gsm8k:Gsm8kTask"), tasks.Gsm8kTask)
  with pytest.raises(ValueError, match="cannot import"):
    tasks.get_task("star_jax.tasks.gsm8k:Nope")
  with pytest.raises(ValueError, match="not a Task"):
    tasks.get_task("star_jax.tasks.gsm8k:normalize_number")
  # Options are the task's declared ones: a typo names the nearest.
  with pytest.raises(ConfigError, match="max_digit.*did you mean 'max_digits'"):
    tasks.get_task("arithmetic", max_digit=3)
  assert tasks.get_task("arithmetic", max_digits=3).with_options(shots=2).options == (
      arithmetic.ArithmeticTask.Options(max_digits=3, shots=2))


# --- contract shared by every task -----------------------------------------------------------


def all_task_examples(cqa_ex, gsm_ex):
  arith = tasks.get_task("arithmetic")
  return [(tasks.get_task("cqa"), cqa_ex, "Fish need water, and rivers hold water."),
          (tasks.get_task("gsm8k"), gsm_ex, "She sold 48 / 2 = 24 in May, so 48 + 24 = 72."),
          (arith, arith.make_example(457, 68, "a"),
           "\n".join(arithmetic.scratchpad_lines(457, 68)))]


def test_contract_round_trip(cqa_ex, gsm_ex):
  for task, ex, rationale in all_task_examples(cqa_ex, gsm_ex):
    prompt, target = task.prompt(ex), task.completion(rationale, ex)
    assert target.endswith(task.end_marker) and task.end_marker in task.stop_strings
    assert task.end_marker not in target[:-len(task.end_marker)]  # one answer, then stop
    assert task.is_correct(task.extract_answer(target), ex), task.name
    assert task.split_rationale(target) == rationale, task.name
    # A generation that ran on into another question is read up to the end marker only.
    assert task.split_rationale(target + prompt) == rationale
    assert task.is_correct(task.extract_answer(target + prompt), ex)
    # The few-shot prompt is the exemplars' own prompt + completion blocks.
    shots = task.exemplars()
    assert len(shots) >= 2 and prompt.count(task.end_marker) == len(shots)
    assert prompt.endswith(task.prompt(ex, few_shot=False))
    assert not task.prompt(ex, few_shot=False).count(task.end_marker)
    # Direct format (no rationale) still carries a checkable answer.
    assert task.is_correct(task.extract_answer(task.completion("", ex)), ex)


def test_contract_rejects_wrong_answers(cqa_ex, gsm_ex):
  wrong = {"cqa": {"answer": "C"}, "gsm8k": {"answer": "73"}, "arithmetic": {"answer": "524"}}
  for task, ex, rationale in all_task_examples(cqa_ex, gsm_ex):
    other = tasks.Example(ex.id, ex.question, wrong[task.name]["answer"], ex.meta)
    assert not task.is_correct(task.extract_answer(task.completion(rationale, other)), ex)
    assert not task.is_correct(None, ex)


def test_extraction_never_raises_on_junk(cqa_ex, gsm_ex):
  rng = random.Random(0)
  pieces = ["the answer is", "Therefore, ", "(", ")", "b", "river", "$", ",", ".", "-", "0", "7",
            "1,2", " ", "\n", "\n\n", "<scratch>", "</scratch>", "C: 1", "é", "\x00", ":", "####"]
  junk = ["", " ", "\n\n", "the answer is", "the answer is (", "The answer is $", "</scratch>",
          "the answer is ((b))", "The answer is -", "The answer is 1,2,3"]
  junk += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(300)]
  for task, ex, _ in all_task_examples(cqa_ex, gsm_ex):
    for text in junk:
      pred = task.extract_answer(text)
      assert pred is None or isinstance(pred, str)
      assert isinstance(task.is_correct(pred, ex), bool)
      assert isinstance(task.split_rationale(text), str)
    assert task.extract_answer(None) is None


# --- CommonsenseQA ---------------------------------------------------------------------------


def test_cqa_load_subsets_and_order(tmp_path, cqa_task):
  write_cqa(tmp_path)
  train = cqa_task.load("train", cfg(tmp_path))
  assert [e.id for e in train] == [f"q{i}" for i in range(20)]  # nothing dropped, file order
  assert train[3].answer == "D" and train[3].meta["choices"][1] == ("B", "river")
  assert len(cqa_task.load("eval", cfg(tmp_path))) == 7  # 7 is not a multiple of any batch
  sub = cqa_task.load("train", cfg(tmp_path, max_train=5))
  assert len(sub) == 5 and sub == cqa_task.load("train", cfg(tmp_path, max_train=5))
  assert [e.meta["line"] for e in sub] == sorted(e.meta["line"] for e in sub)
  assert sub != cqa_task.load("train", cfg(tmp_path, max_train=5, seed=1))
  assert len(cqa_task.load("eval", cfg(tmp_path, max_eval=3))) == 3
  assert len(cqa_task.load("eval", cfg(tmp_path, max_train=3))) == 7  # max_train is train only
  with pytest.raises(ValueError, match="split"):
    cqa_task.load("validation", cfg(tmp_path))


def test_cqa_prompt_format(cqa_task, cqa_ex):
  p = cqa_task.prompt(cqa_ex, few_shot=False)
  assert p == ("Q: Where does a fish live?\nAnswer Choices:\n(a) ocean\n(b) river\n(c) desert\n"
               "(d) kitchen sink\n(e) cloud\nA:")
  assert cqa_task.completion("Fish swim in rivers.", cqa_ex) == (
      " Fish swim in rivers. Therefore, the answer is river (b).\n\n")
  assert cqa_task.prompt(cqa_ex).count("Q: ") == 7
  assert "(CORRECT)" not in cqa_task.prompt(cqa_ex)
  with pytest.raises(TypeError, match="Example"):
    cqa_task.completion("r", "B")


def test_cqa_hint_marks_gold_choice_in_exemplars_and_query(cqa_task, cqa_ex):
  blocks = cqa_task.prompt(cqa_ex, hint=True).split("\n\n")
  shots = cqa_task.exemplars()
  assert len(blocks) == len(shots) + 1
  for block, ex in zip(blocks, [*shots, cqa_ex]):
    marked = [l for l in block.split("\n") if "(CORRECT)" in l]
    assert marked == [f"({ex.answer.lower()}) {dict(ex.meta['choices'])[ex.answer]} (CORRECT)"]


@pytest.mark.parametrize("text, correct", [
    (" Fish live in water. Therefore, the answer is river (b).", True),
    (" the answer is (b)", True),
    (" So the answer is B.", True),
    (" The answer is river.", True),
    (" The answer is River\nmore text", True),
    (" Therefore, the answer is: river (b).", True),
    (" the answer is b)", True),
    (" the answer is river (b) (CORRECT).", True),
    (" the answer is rivers (b).", True),
    (" the answer is (b) river.", True),
    (" the answer is (c) river.", False),  # the label decides when the text names no choice
    (" the answer is ocean (b).", False),  # text and label disagree
    (" the answer is (a)", False),
    (" the answer is (f)", False),
    (" the answer is river or ocean", False),
    (" the answer is a river", False),
    (" I think it is river.", False),  # no answer phrase
    (" blah\n\nQ: x\nA: the answer is river (b).", False),  # answer of another question
    (" the answer is kitchen sink (d)", False),
    (" I know the answer is about water. Therefore, the answer is river (b).", True),
    (" Therefore, the answer is river (b). No, the answer is ocean.", False),
])
def test_cqa_extraction(cqa_task, cqa_ex, text, correct):
  assert cqa_task.is_correct(cqa_task.extract_answer(text), cqa_ex) == correct


def test_cqa_default_shows_a_question_its_own_choice_order_and_answers_by_text(cqa_ex):
  task = tasks.get_task("cqa")
  shown = task.shown_choices(cqa_ex)
  assert [s for s, _, _ in shown] == list("abcde")
  assert sorted(l for _, l, _ in shown) == list("ABCDE") and shown == task.shown_choices(cqa_ex)
  orders = {tuple(l for _, l, _ in task.shown_choices(tasks.Example(
      id=f"q{i}", question="?", answer="A", meta=cqa_ex.meta))) for i in range(20)}
  assert len(orders) > 5  # questions get orders of their own
  prompt = task.prompt(cqa_ex, few_shot=False)
  for s, label, text in shown:
    assert f"({s}) {text}\n" in prompt
  assert task.completion("Fish swim in rivers.", cqa_ex) == (
      " Fish swim in rivers. Therefore, the answer is river.\n\n")
  gold_shown = next(s for s, l, _ in shown if l == "B")
  wrong_shown = next(s for s, l, _ in shown if l != "B")
  assert task.is_correct(task.extract_answer(" Therefore, the answer is river."), cqa_ex)
  assert task.is_correct(f"river ({gold_shown})", cqa_ex)  # shown labels map back
  assert task.is_correct(f"({gold_shown})", cqa_ex)
  assert not task.is_correct(f"({wrong_shown})", cqa_ex)
  hinted = [l for l in task.prompt(cqa_ex, hint=True).split("\n\n")[-1].split("\n")
            if "(CORRECT)" in l]
  assert hinted == [f"({gold_shown}) river (CORRECT)"]


def test_cqa_split_rationale_drops_hint_marker(cqa_task):
  text = (" The river (CORRECT) is where fish live. "
          "Therefore, the answer is river (b) (CORRECT).\n\n")
  assert cqa_task.split_rationale(text) == "The river is where fish live."
  assert cqa_task.split_rationale(" no answer phrase here\n\nQ: next") == "no answer phrase here"


# --- GSM8K -----------------------------------------------------------------------------------


def test_gsm8k_load(tmp_path):
  write_gsm8k(tmp_path)
  task = tasks.get_task("gsm8k")
  train = task.load("train", cfg(tmp_path))
  assert len(train) == 6 and train[0].answer == "72" and train[0].meta["solution"] == SOLUTION
  (test,) = task.load("eval", cfg(tmp_path))
  assert test.answer == "1234" and test.id == "gsm8k-test-00001"
  assert len(task.load("train", cfg(tmp_path, max_train=4))) == 4


def test_gsm8k_hint_is_final_number_only(gsm_ex):
  task = tasks.get_task("gsm8k")
  plain, hinted = task.prompt(gsm_ex), task.prompt(gsm_ex, hint=True)
  assert hinted.endswith("Q: How many clips in total?\nHint: the final answer is 72.\nA:")
  assert "Hint" not in plain
  # Nothing of the worked solution leaks: no line of it, no calculator note.
  for line in SOLUTION.split("\n"):
    assert line not in hinted
  query = task.prompt(gsm_ex, hint=True, few_shot=False)
  assert "<<" not in hinted and "####" not in hinted and "24" not in query
  # Exemplars get the hint too, with their own answers.
  assert hinted.count("Hint: the final answer is") == len(task.exemplars()) + 1


@pytest.mark.parametrize("text, gold, correct", [
    (" 48 / 2 = 24. The answer is 72.", "72", True),
    (" The answer is $1,234.00.", "1234", True),
    (" the answer is 1234 dollars", "1234", True),
    (" The final answer is: 72", "72", True),
    (" The answer is 3.50.", "3.5", True),
    (" The answer is -5.", "-5", True),
    (" The answer is $-5", "-5", True),
    (" The answer is 0.0", "0", True),
    (" The answer is 72.5.", "72", False),
    (" The answer is 7.", "72", False),
    (" The answer is 720.", "72", False),
    (" The answer is seventy-two.", "72", False),
    (" It is 72.", "72", False),  # no answer phrase
    (" The answer is 72. No wait, the answer is 5.", "72", False),  # the last answer counts
    (" If the answer is 5, 5 * 2 = 10 > 9. So the answer is 72.", "72", True),
    (" x\n\nQ: y\nA: The answer is 72.", "72", False),
])
def test_gsm8k_extraction(text, gold, correct):
  task = tasks.get_task("gsm8k")
  ex = tasks.Example("g", "q", gold)
  assert task.is_correct(task.extract_answer(text), ex) == correct


def test_gsm8k_split_rationale_drops_copied_hint():
  task = tasks.get_task("gsm8k")
  text = " Hint: the final answer is 72. She sold 24 in May, 48 + 24 = 72. The answer is 72.\n\n"
  assert task.split_rationale(text) == "She sold 24 in May, 48 + 24 = 72."


def test_normalize_number():
  n = tasks.normalize_number
  assert [n("72"), n("1,234"), n("$1,234.00"), n(" 3.50 "), n("-0"), n("7."), n("-$12.5")] == [
      "72", "1234", "1234", "3.5", "0", "7", "-12.5"]
  assert [n("1,23"), n("seven"), n(""), n("1.2.3"), n(None)] == [None] * 5


# --- arithmetic ------------------------------------------------------------------------------


def test_scratchpad_with_carries():
  assert arithmetic.scratchpad(999, 1) == (
      "<scratch>\n9 9 9 + 1 , C: 0\n9 9 + , 0 C: 1\n9 + , 0 0 C: 1\n, 0 0 0 C: 1\n1 0 0 0\n"
      "</scratch>")
  assert arithmetic.scratchpad_lines(29, 57) == [
      "2 9 + 5 7 , C: 0", "2 + 5 , 6 C: 1", ", 8 6 C: 0", "0 8 6"]
  assert arithmetic.scratchpad_lines(0, 0) == ["0 + 0 , C: 0", ", 0 C: 0", "0 0"]


def test_scratchpad_steps_are_true_partial_sums():
  rng = random.Random(1)
  for _ in range(200):
    a, b = rng.randrange(10 ** rng.randint(1, 7)), rng.randrange(10 ** rng.randint(1, 7))
    lines = arithmetic.scratchpad_lines(a, b)
    assert len(lines) == max(len(str(a)), len(str(b))) + 2
    for k, line in enumerate(lines[1:-1], start=1):
      todo, done = line.split(",")
      digits, carry = done.split("C:")
      partial = a % 10 ** k + b % 10 ** k
      assert digits.replace(" ", "") == str(partial % 10 ** k).zfill(k)
      assert int(carry) == partial // 10 ** k
      rest_a, rest_b = str(a)[:-k], str(b)[:-k]
      assert todo.replace(" ", "") == (f"{rest_a}+{rest_b}" if rest_a or rest_b else "")
    assert int(lines[-1].replace(" ", "")) == a + b


def test_arithmetic_draws_past_int64():
  """Problems of 19+ digits (the extend config's 4x variant draws 20, evaluates 22) are drawn
  exactly, deterministically, of the asked length and disjoint between train and eval; the
  shorter lengths' problems are what numpy's int64 draw always gave."""
  task = tasks.get_task("arithmetic", min_digits=18, max_digits=22)
  c = cfg(max_train=300, max_eval=60)
  train, evals = task.load("train", c), task.load("eval", c)
  assert train == task.load("train", c) and evals == task.load("eval", c)
  assert {e.meta["digits"] for e in train} == {18, 19, 20, 21, 22}
  for e in train + evals:
    a, b = e.meta["a"], e.meta["b"]
    assert len(str(a)) == len(str(b)) == e.meta["digits"] and e.answer == str(a + b)
  pairs = lambda exs: {(e.meta["a"], e.meta["b"]) for e in exs}
  assert not pairs(train) & pairs(evals) and len(pairs(train)) > 290
  rng, again = np.random.default_rng(5), np.random.default_rng(5)
  assert [arithmetic._draw(rng, 10, 99) for _ in range(5)] == [
      int(again.integers(10, 100)) for _ in range(5)]


def test_arithmetic_generation_deterministic_disjoint():
  task = tasks.get_task("arithmetic", min_digits=1, max_digits=3)
  c = cfg(max_train=2000, max_eval=300)
  train, evals = task.load("train", c), task.load("eval", c)
  assert len(train) == 2000
  # Held-out problems are distinct; the one-digit ones run out (10% of 100), the others do not.
  assert len({(e.meta["a"], e.meta["b"]) for e in evals}) == len(evals)
  one_digit = [e for e in evals if e.meta["digits"] == 1]
  held_out = {(a, b) for a in range(10) for b in range(10)
              if arithmetic._in_eval_partition(a, b, 0, 0.1)}
  assert {(e.meta["a"], e.meta["b"]) for e in one_digit} == held_out and 3 <= len(held_out) <= 20
  # The other digit counts get their full share (a third of the draws each, give or take).
  assert all(sum(e.meta["digits"] == d for e in evals) >= 80 for d in (2, 3))
  assert train == task.load("train", c) and evals == task.load("eval", c)
  pairs = lambda exs: {(e.meta["a"], e.meta["b"]) for e in exs}
  assert not pairs(train) & pairs(evals)
  assert {task.difficulty(e) for e in train} == {1, 2, 3}
  for e in train[:50]:
    a, b = e.meta["a"], e.meta["b"]
    assert len(str(a)) == len(str(b)) == e.meta["digits"] and e.answer == str(a + b)
  # The eval set does not move when the train size changes, and seeds matter.
  assert task.load("eval", cfg(max_train=10, max_eval=300)) == evals
  assert task.load("train", cfg(max_train=2000, seed=1)) != train
  assert len({e.id for e in train}) == len(train)
  # Length generalization: eval can use longer problems than train.
  longer = tasks.get_task("arithmetic", max_digits=2, eval_min_digits=6, eval_max_digits=6
                          ).load("eval", cfg(max_eval=20))
  assert {e.meta["digits"] for e in longer} == {6}
  assert task.with_options(max_digits=2, eval_min_digits=6, eval_max_digits=6).load(
      "eval", cfg(max_eval=20)) == longer
  assert len(tasks.get_task("arithmetic").load("train", cfg(max_train=0))) == task.default_train


def test_arithmetic_bad_digit_range():
  with pytest.raises(ValueError, match="min_digits"):
    tasks.get_task("arithmetic", min_digits=3, max_digits=2).load("train", cfg(max_train=5))


def test_a_completion_limit_is_the_right_completions_tokens_with_the_margin(gsm_ex):
  """arithmetic's ``completion_margin``: a sampled completion may take the right one's tokens
  x (1 + margin), at most max_new_tokens; without it (or a margin option) max_new_tokens."""
  from star_jax.tokenizer import CharTokenizer
  plain = tasks.get_task("arithmetic")
  ex = plain.make_example(123, 989, "x")
  right_text = plain.completion(plain.gold_rationale(ex), ex)
  tok = CharTokenizer.from_texts([plain.prompt(ex, hint=True), right_text])
  right = len(tok.encode(right_text))
  assert plain.completion_limit(ex, tok) == plain.max_new_tokens == 360
  margin = tasks.get_task("arithmetic", completion_margin=0.25)
  assert margin.completion_limit(ex, tok) == int(np.ceil(right * 1.25)) and right < 360 / 1.25
  assert tasks.get_task("arithmetic", completion_margin=9.0).completion_limit(ex, tok) == 360
  assert tasks.get_task("gsm8k").completion_limit(gsm_ex, tok) == 256


def test_arithmetic_prompt_hint_and_extraction():
  task = tasks.get_task("arithmetic")
  ex = task.make_example(29, 57, "a")
  assert task.prompt(ex, few_shot=False) == "Input:\n2 9 + 5 7\nTarget:\n"
  assert task.prompt(ex, hint=True, few_shot=False) == "Input:\n2 9 + 5 7\nHint: 8 6\nTarget:\n"
  assert task.prompt(ex, hint=True).count("Hint: ") == 3
  gold = task.completion(task.gold_rationale(ex), ex)
  assert gold.endswith("</scratch>\n8 6\n\n")
  assert task.extract_answer(gold) == "86"
  assert task.extract_answer("8 6\n\n") == "86"  # direct format
  assert task.extract_answer("<scratch>\n2 9 + 5 7 , C: 0\n8 6") is None  # never closed
  assert task.extract_answer("<scratch>\n</scratch>\n8 x 6") is None
  assert not task.is_correct("87", ex) and not task.is_correct("-86", ex)
  assert task.is_correct("086", ex)


def test_arithmetic_without_digit_spaces_is_the_same_task_in_fewer_characters():
  task = tasks.get_task("arithmetic", digit_spaces=False)
  ex = task.make_example(457, 68, "a")
  assert task.prompt(ex, hint=True, few_shot=False) == "Input:\n457 + 68\nHint: 525\nTarget:\n"
  gold = task.completion(task.gold_rationale(ex), ex)
  assert gold == ("<scratch>\n457 + 68 , C: 0\n45 + 6 , 5 C: 1\n4 + , 25 C: 1\n, 525 C: 0\n"
                  "0525\n</scratch>\n525\n\n")
  assert task.extract_answer(gold) == "525" and task.is_correct("525", ex)
  rationale = task.split_rationale(gold)
  assert task.rationale_supports(rationale, ex)
  assert task.step_correct(rationale, ex) == [True] * 5
  # A spaced line is a different text from the one this format trains: a wrong step.
  spaced = task.gold_rationale(ex).replace("45 + 6 , 5", "4 5 + 6 , 5")
  assert task.step_correct(spaced, ex) == [True, False, True, True, True]
  assert len(task.prompt(ex, few_shot=True)) < len(tasks.get_task("arithmetic").prompt(ex))
  with pytest.raises(ConfigError, match="digit_spaces=False needs positions='sequence'"):
    tasks.get_task("arithmetic", digit_spaces=False, positions="line_column")


def test_arithmetic_sum_lines_write_each_digit_sum_next_to_its_operands():
  assert arithmetic.scratchpad_lines(29, 57, sums=True) == [
      "2 9 + 5 7 , C: 0", "9 + 7 + 0 = 1 6", "2 + 5 , 6 C: 1", "2 + 5 + 1 = 8", ", 8 6 C: 0",
      "0 8 6"]
  task = tasks.get_task("arithmetic", digit_spaces=False, sum_lines=True)
  ex = task.make_example(999, 1, "a")
  gold = task.completion(task.gold_rationale(ex), ex)
  assert gold == ("<scratch>\n999 + 1 , C: 0\n9 + 1 + 0 = 10\n99 + , 0 C: 1\n9 + 0 + 1 = 10\n"
                  "9 + , 00 C: 1\n9 + 0 + 1 = 10\n, 000 C: 1\n1000\n</scratch>\n1000\n\n")
  assert task.extract_answer(gold) == "1000"
  rationale = task.split_rationale(gold)
  assert task.rationale_supports(rationale, ex) and task.step_accuracy(gold, ex) == 1.0
  wrong = rationale.replace("9 + 0 + 1 = 10\n9 +", "9 + 0 + 1 = 11\n9 +")
  assert task.step_correct(wrong, ex) == [True, True, True, False, True, True, True, True]
  # The paper's lines are not this format's: a scratchpad without the sums is mostly wrong.
  paper = tasks.get_task("arithmetic", digit_spaces=False).gold_rationale(ex)
  assert task.step_accuracy(paper, ex) < 0.5


def test_step_accuracy():
  task = tasks.get_task("arithmetic")
  ex = task.make_example(457, 68, "a")
  true = list(arithmetic.scratchpad_lines(457, 68))
  assert len(true) == 5
  full = task.completion("\n".join(true), ex)
  assert task.step_accuracy(full, ex) == 1.0
  assert task.step_accuracy("\n".join(true), ex) == 1.0
  wrong = list(true)
  wrong[2] = "4 + , 2 5 C: 0"  # a dropped carry: the answer can still look plausible
  assert task.step_correct("\n".join(wrong), ex) == [True, True, False, True, True]
  assert task.step_accuracy(task.completion("\n".join(wrong), ex), ex) == 0.8
  assert task.step_accuracy("\n".join(true[:3]), ex) == 0.6  # missing steps are wrong
  assert task.step_accuracy("\n".join(true + ["junk"]), ex) == 5 / 6  # extra steps too
  assert task.step_accuracy("", ex) == 0.0
  assert task.step_accuracy("5 2 5\n\n", ex) == 0.0  # direct answer: no correct steps


def test_seed_by_digit_counts_is_distinct_and_never_held_out():
  task = tasks.get_task("arithmetic", digit_counts=(200, 40, 30, 10, 5))
  data = DataConfig(seed=3)
  seed = task.load("train", data)
  digits = [ex.meta["digits"] for ex in seed]
  # one-digit problems run out: the train partition holds about 90 of the 100
  assert 80 < digits.count(1) < 100 and [digits.count(d) for d in (2, 3, 4, 5)] == [40, 30, 10, 5]
  assert len({ex.question for ex in seed}) == len(seed)
  held_out = {ex.question for ex in tasks.get_task("arithmetic").load(
      "eval", DataConfig(seed=3, max_eval=2000))}
  assert not held_out & {ex.question for ex in seed}
  assert digits != sorted(digits)  # lengths are shuffled together
  assert [ex.question for ex in task.load("train", data)] == [ex.question for ex in seed]


def test_rationale_supports_only_a_scratchpad_that_reaches_the_answer():
  task = tasks.get_task("arithmetic")
  ex = task.make_example(457, 68, "a")
  true = "\n".join(arithmetic.scratchpad_lines(457, 68))
  assert task.rationale_supports(true, ex)
  assert task.rationale_supports(task.completion(true, ex), ex)
  # A wrong scratchpad whose answer line copies the hint: the answer is right, the rationale
  # does not reach it.
  wrong = true.replace("0 5 2 5", "0 5 1 5")
  copied = task.completion(wrong, ex)
  assert task.is_correct(task.extract_answer(copied), ex)
  assert not task.rationale_supports(task.split_rationale(copied), ex)
  assert not task.rationale_supports("", ex)  # a direct answer has no rationale to check
  cqa = tasks.get_task("cqa")
  assert cqa.rationale_supports("anything", None) and cqa.step_correct("x", None) is None
  # ... but a direct answer (no words before the answer phrase) is no rationale, for any task
  direct = cqa.split_rationale(" Therefore, the answer is mailbox.\n\n")
  assert not cqa.rationale_supports(direct, None) and not cqa.rationale_supports(" .\n", None)
  assert cqa.step_choices is None and task.step_choices == 10


def test_arithmetic_final_from_steps_drops_a_hint_copied_under_a_broken_scratchpad():
  # Measured on SmolLM2 (docs/real_model.md, recipe 2): a hinted sample whose steps went
  # wrong, then whose last line copies the hint. The last-line check alone keeps it.
  broken = ("2348339 + 9504046 , C: 0\n9 + 6 + 0 = 15\n234833 + 950404 , 5 C: 1\n"
            "4 + 0 + 1 = 5\n23483 + 9504 , 55 C: 0\n, 14975 C: 1\n11852385")
  opts = dict(digit_spaces=False, sum_lines=True, positions="sequence")
  loose = ArithmeticTask(ArithmeticTask.Options(**opts))
  strict = ArithmeticTask(ArithmeticTask.Options(**opts, final_from_steps=True))
  ex = ArithmeticTask.make_example(2348339, 9504046, "x")
  assert loose.rationale_supports(broken, ex)
  assert not strict.rationale_supports(broken, ex)
  for task in (strict, ArithmeticTask(ArithmeticTask.Options(final_from_steps=True))):
    for a, b in ((2348339, 9504046), (999, 1), (7, 5), (0, 0)):
      e = ArithmeticTask.make_example(a, b, "g")
      assert task.rationale_supports(task.gold_rationale(e), e), (a, b)
      # the right scratchpad with a wrong final line is still unsupported
      wrong = task.gold_rationale(e).rsplit("\n", 1)[0] + "\n" + str(a + b + 1)
      assert not task.rationale_supports(wrong, e)
