"""Property tests: answer extraction never raises and never accepts a wrong answer."""

import dataclasses

from hypothesis import given, settings, strategies as st

from star_jax.tasks import Example, get_task

CQA, GSM, ARITH = get_task("cqa"), get_task("gsm8k"), get_task("arithmetic")
CHOICES = tuple(zip("ABCDE", ["river", "ocean", "house", "garden", "school"]))
# Arbitrary model output, with the characters answer phrases are made of over-represented.
junk = st.text(alphabet=st.sampled_from(list("abcdeABCDE0123456789 .,()$#:\n<>/+-")) |
               st.characters(), max_size=200)
SETTINGS = settings(max_examples=150, deadline=None)


def cqa_example(key):
  return Example(id="q", question="Where is water?", answer=key, meta={"choices": CHOICES})


@SETTINGS
@given(text=junk, key=st.sampled_from("ABCDE"))
def test_cqa_accepts_only_the_gold_choice(text, key):
  ex = cqa_example(key)
  pred = CQA.extract_answer(text)  # never raises
  if CQA.is_correct(pred, ex):
    assert CQA.resolve_choice(pred, ex) == key


@SETTINGS
@given(prefix=junk, key=st.sampled_from("ABCDE"), wrong=st.sampled_from("ABCDE"))
def test_cqa_final_answer_decides(prefix, key, wrong):
  ex = cqa_example(key)
  said = cqa_example(wrong)
  text = prefix.replace("\n\n", " ") + CQA.completion("Because.", said)
  assert CQA.is_correct(CQA.extract_answer(text), ex) == (wrong == key)


@SETTINGS
@given(text=junk, gold=st.integers(0, 10**7))
def test_gsm8k_accepts_only_the_gold_number(text, gold):
  ex = Example(id="g", question="?", answer=str(gold))
  pred = GSM.extract_answer(text)
  if GSM.is_correct(pred, ex):
    assert float(pred) == gold


@SETTINGS
@given(prefix=junk, gold=st.integers(0, 10**7), delta=st.integers(-50, 50))
def test_gsm8k_final_answer_decides(prefix, gold, delta):
  ex = Example(id="g", question="?", answer=str(gold))
  said = dataclasses.replace(ex, answer=f"{gold + delta:,}")  # commas are normalised away
  text = prefix.replace("\n\n", " ") + GSM.completion("Some steps.", said)
  assert GSM.is_correct(GSM.extract_answer(text), ex) == (delta == 0)


@SETTINGS
@given(text=junk, a=st.integers(0, 99999), b=st.integers(0, 99999))
def test_arithmetic_accepts_only_the_true_sum(text, a, b):
  ex = ARITH.make_example(a, b, "x")
  pred = ARITH.extract_answer(text)
  if ARITH.is_correct(pred, ex):
    assert int(pred) == a + b


@SETTINGS
@given(a=st.integers(0, 99999), b=st.integers(0, 99999), delta=st.integers(-20, 20),
       rationale=junk)
def test_arithmetic_final_answer_decides(a, b, delta, rationale):
  ex = ARITH.make_example(a, b, "x")
  if a + b + delta < 0:
    return
  said = dataclasses.replace(ex, answer=str(a + b + delta))
  text = ARITH.completion("\n".join(ex.meta["scratchpad"]), said)
  assert ARITH.is_correct(ARITH.extract_answer(text), ex) == (delta == 0)
  # Whatever the rationale says, it cannot change the verdict on a wrong final line.
  garbled = ARITH.completion(rationale.replace("\n\n", "\n").replace("</scratch>", ""), said)
  if delta != 0:
    assert not ARITH.is_correct(ARITH.extract_answer(garbled), ex)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 .,()$=*/+-x%:Ae")), max_size=200)
       | junk, gold=st.integers(-10**6, 10**7))
def test_gsm8k_support_never_raises_and_needs_the_gold_number(text, gold):
  ex = Example(id="g", question="?", answer=str(gold))
  if GSM.rationale_supports(text, ex):  # never raises
    assert str(abs(gold)) in text.replace(",", "")
