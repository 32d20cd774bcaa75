"""Completions of 3-digit sums that scripted samplers answer with (helpers/scripted.py):
the gold scratchpad; the same path respaced (another text); another path, one wrong middle
line, that still ends at the right sum; a wrong answer (another problem's scratchpad and sum);
and the gold one with the hint line copied in front."""

from star_jax import tasks

TASK = tasks.get_task("arithmetic", max_digits=3, min_digits=3)


def right(ex) -> str:
  return TASK.completion(TASK.gold_rationale(ex), ex)


def spaced(ex) -> str:  # the same path (scratch lines), another text
  lines = TASK.gold_rationale(ex).split("\n")
  return TASK.completion("\n".join([lines[0] + "  "] + lines[1:]), ex)


def other_path(ex) -> str:  # one wrong middle line, the right last line: a distinct path
  lines = TASK.gold_rationale(ex).split("\n")
  lines[1] = lines[1].replace(" C: ", " 9 C: ", 1)
  return TASK.completion("\n".join(lines), ex)


def wrong(ex) -> str:
  other = TASK.make_example(ex.meta["a"], ex.meta["b"] + 1, "other")
  return TASK.completion(TASK.gold_rationale(other), other)


def hint_copied(ex) -> str:  # right, with the hint line copied in front of the scratchpad
  return f"Hint: {' '.join(ex.answer)}\n" + right(ex)
