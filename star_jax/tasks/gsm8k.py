"""GSM8K: grade-school math word problems with a worked rationale.

Text format (one exemplar; the prompt ends after "A:"):

  Q: A baker makes 4 trays of muffins with 12 muffins on each tray. ...
  A: She makes 4 * 12 = 48 muffins. ... The answer is 18.
  <blank line>

The hint (rationalization) is one line with the final number only,
"Hint: the final answer is 18.", between the question and "A:". The dataset's
worked solution is kept in `meta['solution']` for reference and is never part
of any prompt (the original STaR code leaked it as the hint).
"""

from __future__ import annotations

import ast
import decimal
import operator
import re

from star_jax.data.builders import load_records
from star_jax.data.data_config import DataConfig
from star_jax.tasks.base import (Example, Task, check_split, first_block, last_match, register_task,
                                 take_subset)

ANSWER_PREFIX = "The answer is"
_ANSWER_RE = re.compile(r"(?:\b(?:therefore|so|thus)\s*,?\s*)?\bthe (?:final )?answer is\b",
                        re.IGNORECASE)
# A number as people write it: optional sign and "$", thousands commas, decimals.
_NUMBER = r"(-\s*)?\$?\s*(-\s*)?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
_NUMBER_AFTER_RE = re.compile(r"\s*:?\s*" + _NUMBER)
_ANSWER_STATED_RE = re.compile(_ANSWER_RE.pattern + r"\s*:?\s*" + _NUMBER, re.IGNORECASE)
# The hint line, in case the model copies it into its rationale.
_HINT_RE = re.compile(r"\s*hint:\s*the final answer is\s*" + _NUMBER + r"\.?", re.IGNORECASE)
# A number inside a rationale. Unlike _NUMBER a minus only counts as a sign when it touches the
# digits and follows no operand ("48 - 30", "48-30": thirty, not minus thirty); ".8" is 0.8.
_RATIONALE_NUMBER_RE = re.compile(
    r"(?<![\w.,])(?:(-)\$?|\$-?)?(\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(\.\d+)?(?<=\d)(?![\d,.]\d)")
# The official solutions' calculator annotations, "48/2 = <<48/2=24>>24": not model text.
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
# One side of an equation: numbers, operators, brackets, "$", "x" / "×" for times, "÷".
_SIDE = frozenset("0123456789 \t\n.,+-*/x×÷()$%")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}

# Our own exemplars (not the paper's): (question, rationale, final answer).
_SHOTS = (
    ("A baker makes 4 trays of muffins with 12 muffins on each tray. She sells 30 muffins. "
     "How many muffins does she have left?",
     "She makes 4 * 12 = 48 muffins. After selling 30, she has 48 - 30 = 18 muffins left.", "18"),
    ("Tom reads 15 pages of his book every day. The book has 120 pages. How many days does it "
     "take him to finish the book?",
     "He reads 15 pages a day, so he needs 120 / 15 = 8 days.", "8"),
    ("A shirt costs $25 and a pair of pants costs $40. Maria buys 2 shirts and 1 pair of pants "
     "and pays with a $100 bill. How much change does she get?",
     "Two shirts cost 2 * 25 = 50 dollars. With the pants she spends 50 + 40 = 90 dollars. "
     "Her change is 100 - 90 = 10 dollars.", "10"),
    ("There are 24 students in a class. One third of them walk to school and the rest take the "
     "bus. How many students take the bus?",
     "One third of 24 is 24 / 3 = 8 students who walk. The rest, 24 - 8 = 16 students, take "
     "the bus.", "16"),
)


def normalize_number(text: str) -> str | None:
  """Canonical text of a number: "$1,234.00" -> "1234", "-0.50" -> "-0.5"; None if not one."""
  if not isinstance(text, str):
    return None
  m = re.fullmatch(r"\s*" + _NUMBER + r"\s*\.?\s*", text)
  if not m:
    return None
  negative = bool(m.group(1) or m.group(2))
  value = decimal.Decimal(m.group(3).replace(",", "") + (m.group(4) or ""))
  if value == 0:
    negative = False
  if value == value.to_integral_value():
    out = format(value.to_integral_value(), "f")  # not int(): 4,300+ digits would raise
  else:
    out = format(value.normalize(), "f")
  return f"-{out}" if negative else out


def solution_rationale(solution: str) -> str:
  """An official solution in our rationale form: the worked lines before "####" on one line,
  calculator annotations removed ("48/2 = <<48/2=24>>24 clips" -> "48/2 = 24 clips")."""
  body = _CALCULATOR_RE.sub("", solution.rsplit("####", 1)[0])
  return " ".join(line.strip() for line in body.splitlines() if line.strip())


def rationale_results(rationale: str) -> tuple[str | None, str | None]:
  """(the number right after the rationale's last "=", its last number), normalized; None
  where there is none. The two places a worked solution puts its final result: "... 48 - 30 =
  18 muffins left." has both 18; "... 3 * 100 = 300 pages in 240 minutes." has 300 and 240."""
  numbers = list(_RATIONALE_NUMBER_RE.finditer(rationale))
  last = _number_value(numbers[-1]) if numbers else None
  eq = rationale.rfind("=")
  after = [m for m in numbers if m.start() > eq] if eq >= 0 else []
  # Only the number the "=" itself gives: "= 18", "= $18", "=18"; not one further on.
  result = (_number_value(after[0]) if after and not rationale[eq + 1:after[0].start()].strip(" $")
            else None)
  return result, last


def _side_value(side: str, lhs: bool) -> tuple[decimal.Decimal, int, bool] | None:
  """(value, decimals shown, has an operation) of one side of an "=", or None where it is not
  plain arithmetic. A sentence break ends a side: "= 16. 5 + 3" gives 16, "30, 4 * 2" 4 * 2."""
  parts = re.split(r"[.,]\s", side)
  side = (parts[-1] if lhs else parts[0]).strip().rstrip(".,")
  # A side that starts (left) or ends (right) with an operator runs on into words:
  # "72 cubic ft * 3/4 = 54", "= 5A/5". A "%" or ":" (a time) has its own arithmetic.
  if (not side or side[0] in "+*/x×)" or side[-1] in "+-*/x×(" or "%" in side
      or re.search(r"\d\s+\(?\d", side)):
    return None
  expr = re.sub(r"(?<=\d),(?=\d{3})", "", side.replace("$", ""))
  expr = expr.replace("×", "*").replace("÷", "/")
  expr = re.sub(r"(?<=[\d)\s])x(?=[\s\d(.$])", "*", expr)
  try:
    value = _evaluate(ast.parse(expr.strip(), mode="eval").body)
  except (SyntaxError, ValueError, ArithmeticError, RecursionError):
    return None
  shown = [len(f) - 1 for f in re.findall(r"\.\d+", expr)]
  return value, max(shown, default=0), bool(re.search(r"[\d)]\s*[-+*/]\s*[\d(.]", expr))


def _evaluate(node) -> decimal.Decimal:
  if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
    return decimal.Decimal(str(node.value))
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
    return -_evaluate(node.operand)
  if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
    return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
  raise ValueError("not plain arithmetic")


def false_equations(rationale: str) -> list[str]:
  """The equations of `rationale` whose arithmetic is wrong ("70 / 2 = 33"), as text.

  Only plain arithmetic is checked: both sides numbers and + - * / x (a side with words,
  units, "%" or a time is skipped), equal to the precision the rationale shows ("10/3 =
  3.33", "36/10 = 4" when rounding up to whole items is one unit off at most)."""
  out, text = [], rationale
  for i in (i for i, c in enumerate(text) if c == "="):
    start, end = i, i + 1
    while start and text[start - 1] in _SIDE:
      start -= 1
    while end < len(text) and text[end] in _SIDE:
      end += 1
    # A time of day ("6:00+48=6:48") or a side glued to a word: a variable ("D2 = 644",
    # "100/5 = 5A/5"), not a number.
    before, after = text[start - 1:start + 1], text[end - 1:end + 1]
    if re.fullmatch(r"[:\w][^\s,.]", before) or re.fullmatch(r"[^\s,.][:\w]", after):
      continue
    lhs, rhs = _side_value(text[start:i], True), _side_value(text[i + 1:end], False)
    # The left side must compute: "Remaining 10 = 62,300/10" names its number, it is no sum.
    if lhs is None or rhs is None or not lhs[2]:
      continue
    digits = min(lhs[1], rhs[1]) if rhs[2] else rhs[1]
    if abs(lhs[0] - rhs[0]) >= decimal.Decimal(10) ** -digits:
      out.append(f"{text[start:i].strip()} = {text[i + 1:end].strip()}")
  return out


def equations(rationale: str) -> list[str]:
  """The rationale's equations in order, spaces, "$" and thousands commas dropped ("48 / 2 =
  24 clips" -> "48/2=24"): RFT's reasoning path. Sides are the arithmetic characters around
  each "=", as ``false_equations`` reads them; an equation without digits on both sides is
  no step of the computation."""
  out, text = [], str(rationale)
  for i in (i for i, c in enumerate(text) if c == "="):
    start, end = i, i + 1
    while start and text[start - 1] in _SIDE:
      start -= 1
    while end < len(text) and text[end] in _SIDE:
      end += 1
    sides = [re.sub(r"[\s$]|(?<=\d),(?=\d{3})", "", t).strip(".,")
             for t in (text[start:i], text[i + 1:end])]
    if all(re.search(r"\d", t) for t in sides):
      out.append("=".join(sides))
  return out


def _number_value(m: re.Match) -> str | None:
  sign, whole, frac = m.group(1), m.group(2), m.group(3)
  return normalize_number(("-" if sign or m.group(0).startswith("$-") else "")
                          + (whole or "0") + (frac or ""))


@register_task("gsm8k")
class Gsm8kTask(Task):
  """GSM8K (official jsonl through the TFDS builder); eval is the test split."""

  name = "gsm8k"
  data_source = "gsm8k"  # its official files (data.sources.SOURCES)
  max_new_tokens = 256
  step_boundaries = (". ", "\n")  # sentences, and lines

  def __init__(self, options: Task.Options | None = None, max_new_tokens: int | None = None):
    super().__init__(options, max_new_tokens)
    self._shots = [Example(id=f"gsm8k-shot-{i}", question=q, answer=a, meta={"rationale": r})
                   for i, (q, r, a) in enumerate(_SHOTS)]

  def exemplars(self) -> list[Example]:
    return list(self._shots)

  def gold_rationale(self, ex: Example) -> str | None:
    """The official worked solution in rationale form (a seed set P's text), where the
    example carries one (train and held-out examples do; the exemplars carry their own)."""
    solution = ex.meta.get("solution")
    return solution_rationale(solution) if solution else ex.meta.get("rationale")

  def load(self, split: str, data: DataConfig) -> list[Example]:
    check_split(split)
    examples = []
    for r in load_records(self.data_source, split, data):
      # The source check guarantees a number after "####", so this is never None.
      answer = normalize_number(r["answer"])
      examples.append(Example(id=r["id"], question=r["question"], answer=answer,
                              meta={"solution": r["solution"], "line": r["index"]}))
    return take_subset(examples, data.limit(split), data.seed)

  def _query(self, ex: Example, hint: bool) -> str:
    hint_line = f"Hint: the final answer is {ex.answer}.\n" if hint else ""
    return f"Q: {ex.question}\n{hint_line}A:"

  def prompt(self, ex: Example, hint: bool = False, few_shot: bool = True) -> str:
    shots = self._shots if few_shot else []
    parts = [self._query(s, hint) + self.completion(s.meta["rationale"], s) for s in shots]
    return "".join(parts) + self._query(ex, hint)

  def completion(self, rationale: str, ex: Example) -> str:
    if not isinstance(ex, Example):
      raise TypeError(f"completion(rationale, ex) takes the Example, got {type(ex).__name__}")
    rationale = rationale.strip()
    answer = f"{ANSWER_PREFIX} {ex.answer}."
    return f" {rationale} {answer}{self.end_marker}" if rationale else f" {answer}{self.end_marker}"

  def extract_answer(self, text: str) -> str | None:
    """The number right after the last "the answer is" of the first block, normalized."""
    if not isinstance(text, str):
      return None
    block = first_block(text, self.end_marker)
    m = last_match(_ANSWER_RE, block)
    if not m:
      return None
    n = _NUMBER_AFTER_RE.match(block, m.end())
    return normalize_number(n.group(0).strip().lstrip(":")) if n else None

  def is_correct(self, prediction: str | None, ex: Example) -> bool:
    pred = normalize_number(prediction) if prediction is not None else None
    return pred is not None and decimal.Decimal(pred) == decimal.Decimal(ex.answer)

  def split_rationale(self, text: str) -> str:
    if not isinstance(text, str):
      return ""
    block = first_block(text, self.end_marker)
    m = last_match(_ANSWER_RE, block)
    # A rationale written under a hint must not carry the hint into training data.
    return _HINT_RE.sub("", block[:m.start()] if m else block).strip()

  def path_key(self, rationale: str) -> str:
    """The sequence of equations (RFT's path); a rationale with none: its normalised text."""
    eqs = equations(rationale)
    return " ; ".join(eqs) if eqs else super().path_key(rationale)

  def rationale_supports(self, rationale: str, ex: Example) -> bool:
    """The rationale's own final result is the gold answer: the number its last "=" gives, or
    (for a last sentence that restates the result: "... because 50 < 52") its last number;
    and none of its equations is false arithmetic (`false_equations`).

    A hinted sample that goes wrong and then only copies the hint into "The answer is N.",
    or into its last equation, fails. `rationale` may also be a whole completion: what
    follows the end marker, and any "the answer is N" phrase, never count as its result.
    """
    if not isinstance(rationale, str) or not isinstance(ex, Example):
      return False
    body = _HINT_RE.sub(" ", first_block(rationale, self.end_marker))
    # Every "the answer is N" states an answer, it computes nothing (a hint copied twice
    # leaves one in the split rationale). Only the phrase and its number go, not the text
    # after it: "the final answer is 15 gallons * 8 = 120 pints" still ends in its last step.
    body = _ANSWER_STATED_RE.sub(" ", body)
    # A hint copied into the last step itself ("70 / 2 = 33" for the hinted 33) reaches the
    # answer by wrong arithmetic: any false equation fails the rationale.
    return (any(r is not None and self.is_correct(r, ex) for r in rationale_results(body))
            and not false_equations(body))
