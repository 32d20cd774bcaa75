"""A completion's steps (the unit a search over reasoning steps expands): joined they are the
completion, so every prefix of steps is a prefix of the text; arithmetic's steps are its
scratch lines, the sentence tasks' their sentences."""

from hypothesis import given, settings, strategies as st

from star_jax.tasks import get_task


def test_arithmetic_steps_are_the_scratch_lines():
  task = get_task("arithmetic")
  ex = task.exemplars()[0]
  completion = task.completion(task.gold_rationale(ex), ex)
  steps = task.steps(completion)
  assert "".join(steps) == completion
  assert steps[0] == "<scratch>\n" and steps[-2] == "</scratch>\n"
  lines = steps[1:-2]  # the scratch lines, one step each, as step_correct counts them
  assert [line.strip() for line in lines] == task.true_lines(ex)
  assert len(lines) == len(task.step_correct(task.gold_rationale(ex), ex))
  assert steps[-1] == "8 3\n\n"  # the answer line keeps the blank line that ends it


def test_sentence_tasks_step_by_sentence():
  task = get_task("gsm8k")
  text = " She makes 4 * 12 = 48 muffins. After selling 30, she has 18.5 left. The answer is 18.\n\n"
  assert task.steps(text) == [" She makes 4 * 12 = 48 muffins. ",
                              "After selling 30, she has 18.5 left. ", "The answer is 18.\n\n"]
  assert get_task("cqa").steps("Mail goes to a mailbox. So the answer is mailbox.") == [
      "Mail goes to a mailbox. ", "So the answer is mailbox."]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from(list("ab .\n")), max_size=40),
       st.sampled_from(["arithmetic", "gsm8k", "cqa"]))
def test_steps_join_to_the_completion_and_none_is_blank(text, name):
  steps = get_task(name).steps(text)
  assert "".join(steps) == text
  assert all(step.strip() for step in steps[1:])  # a blank one joins the step before it
