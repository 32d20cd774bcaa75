"""Reading an arithmetic scratchpad back: its lines, and which steps match the true ones."""

from __future__ import annotations

from star_jax.tasks.base import Example, first_block

SCRATCH_OPEN, SCRATCH_CLOSE = "<scratch>", "</scratch>"


def scratch_body(text: str, end_marker: str = "\n\n") -> str:
  """The lines between <scratch> and </scratch> (to the end if unclosed); "" if none."""
  if not isinstance(text, str):
    return ""
  block = first_block(text, end_marker)
  if SCRATCH_OPEN not in block:
    return ""  # direct answer: no rationale
  return block.split(SCRATCH_OPEN, 1)[1].split(SCRATCH_CLOSE, 1)[0].strip("\n")


def scratch_lines(generated: str, end_marker: str = "\n\n") -> list[str]:
  """The scratch lines of a full generation (with tags) or of a bare rationale."""
  if SCRATCH_OPEN in generated:
    generated = scratch_body(generated, end_marker)
  body = first_block(generated, end_marker).strip("\n")
  return [l.strip() for l in body.split("\n")] if body.strip() else []


def step_correct(generated: str, ex: Example, end_marker: str = "\n\n",
                 true: list[str] | None = None) -> list[bool]:
  """Per step: does the generated scratch line equal the true one? Missing and
  extra lines count as wrong steps. `generated` is a full generation (with tags)
  or a bare rationale as returned by `split_rationale`; ``true``: the true lines in the task's
  format (default: the paper's, ``meta['scratchpad']``)."""
  got = scratch_lines(generated, end_marker)
  true = list(ex.meta["scratchpad"]) if true is None else true
  return [i < len(got) and i < len(true) and got[i] == true[i]
          for i in range(max(len(got), len(true)))]
