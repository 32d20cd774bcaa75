"""GSM8K's support check: a kept rationale must itself reach the gold answer."""

import pytest

from star_jax.tasks import Example, get_task
from star_jax.tasks.gsm8k import false_equations, rationale_results, solution_rationale

GSM = get_task("gsm8k")


def ex_of(answer):
  return Example(id="g", question="?", answer=answer)


@pytest.mark.parametrize("rationale,answer", [
    ("She makes 4 * 12 = 48 muffins. After selling 30, she has 48 - 30 = 18 muffins left.", "18"),
    ("He reads 15 pages a day, so he needs 120 / 15 = 8 days.", "8"),
    ("In total they finish 120 + 108 + 100 = 328 pages in 240 minutes.", "328"),  # the "="
    ("Each load costs 40/160 = $0.25, so 10 loads cost $2.50 and she has 7.5 dollars left.",
     "7.5"),  # the last number: a closing sentence that states the result
    ("The first route takes 20 hours, the second 30, so the fastest takes 20 hours.", "20"),
    ("He had $1,200 and spent $-50.5 = -$50.50 on fees.", "-50.5"),
    ("12/15=.8 of them came.", "0.8"),
    # "the final answer is" inside the rationale is not its closing answer phrase.
    ("So the final answer is 15 gallons * 8 pints / gallon = 120 pints.", "120"),
])
def test_a_rationale_whose_own_result_is_the_answer_is_supported(rationale, answer):
  ex = ex_of(answer)
  assert GSM.rationale_supports(rationale, ex)
  # The same rationale as a training text, or as a generation split the way the loop does.
  completion = GSM.completion(rationale, ex)
  assert GSM.rationale_supports(completion, ex)
  assert GSM.rationale_supports(GSM.split_rationale(completion + "Q: next"), ex)


@pytest.mark.parametrize("generated,answer", [
    (" 12 * 80 = 960. The answer is 2290.\n\n", "2290"),  # a wrong last step, the hint copied
    (" She has 48 - 30 = 18 muffins left. The answer is 19.", "19"),
    (" 12 * 80 = 960. The answer is 2290. The answer is 2290.", "2290"),
    # The copied hint line is no part of the rationale.
    (" Hint: the final answer is 2290.\n12 * 80 = 960. The answer is 2290.", "2290"),
    # 100 - 90: the last number is 90, not minus 90.
    (" She pays 100 - 90. The answer is -90.", "-90"),
    # The hint copied into the last equation itself: the arithmetic is false.
    (" Half of 70 is 70 / 2 = 33. The answer is 33.", "33"),
    (" He has 5 * 20 = 100 matches. He has 1200 - 100 = 1200 matches. The answer is 1200.",
     "1200"),
    (" The rest, 35 - 20 = 10 erasers, are Gabriel's. The answer is 10.", "10"),
    # A false step earlier on: the rationale does not reach the answer by itself either.
    (" 4 * 12 = 46 muffins, and 48 - 30 = 18 are left. The answer is 18.", "18"),
])
def test_a_copied_hint_after_a_wrong_last_step_is_not_supported(generated, answer):
  ex = ex_of(answer)
  assert GSM.is_correct(GSM.extract_answer(generated), ex)  # the answer line alone passes
  assert not GSM.rationale_supports(GSM.split_rationale(generated), ex)
  assert not GSM.rationale_supports(generated, ex)


def test_without_the_answer_phrase_the_rationale_alone_decides():
  assert GSM.rationale_supports("So 6 * 7 = 42 eggs", ex_of("42"))
  assert not GSM.rationale_supports("So 6 * 7 = 41 eggs", ex_of("42"))
  # The closing answer phrase is never the rationale's result: no rationale, no support.
  for text in ("The answer is 42.", " The answer is 42.\n\n", "", "   ", "no numbers at all"):
    assert not GSM.rationale_supports(text, ex_of("42")), text


def test_results_are_the_last_equals_and_the_last_number():
  assert rationale_results("3 * 100 = 300 pages in 240 minutes.") == ("300", "240")
  assert rationale_results("It costs = $1,234.50 in all") == ("1234.5", "1234.5")
  assert rationale_results("x = y, so 5 apples") == (None, "5")  # "=" gives no number
  assert rationale_results("48-30 left") == (None, "30")
  assert rationale_results("") == (None, None)


@pytest.mark.parametrize("rationale,false", [
    ("She makes 4 * 12 = 48 muffins, and 48 - 30 = 18 are left.", []),
    ("12 x 3 = 37 eggs", ["12 x 3 = 37"]),
    ("3000 ÷ (5+1) = 501 women", ["3000 ÷ (5+1) = 501"]),
    ("2 * 23 - 4 = 46 - 4 = 41 times", ["46 - 4 = 41"]),  # a chain: each "=" on its own
    ("1,200 * 2 = 2,400 and $1.50 * 3 = $4.50", []),
    ("10/3 = 3.33 each; 2/3 = .66; 36/10 = 4 boxes (rounded up)", []),  # to the shown digits
    # Not plain arithmetic, so not checked: units, percent, time, variables, labels.
    ("72 cubic ft * 3/4 = 50 cubic ft, 40% * 250 = 1, 6:00+48=6:50, D2 = 644 - 19 = 625, "
     "100/5 = 5A/5, Remaining 10 = 62,300/10", []),
    ("1/0 = 5, 0/0 = 1, " + "(" * 300 + "1" + ")" * 300 + " + 1 = 3", []),
])
def test_false_equations_checks_plain_arithmetic_only(rationale, false):
  assert false_equations(rationale) == false


def test_solution_rationale_strips_the_calculator_and_the_final_line():
  solution = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72")
  assert solution_rationale(solution) == (
      "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether.")
  assert GSM.rationale_supports(solution_rationale(solution), ex_of("72"))
  assert not GSM.rationale_supports(solution_rationale(solution), ex_of("24"))


@pytest.mark.parametrize("junk", [None, 3, b"= 5", "=" * 50, "$-,.=$", "== 5 =", "\n\n= 5",
                                  "The answer is", "1" * 5000 + "=", "-.5=-.", "5,00,0 = 5,000"])
def test_junk_never_raises(junk):
  assert GSM.rationale_supports(junk, ex_of("5")) in (True, False)
  assert GSM.rationale_supports("2 + 3 = 5", None) is False
