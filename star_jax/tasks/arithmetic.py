"""n-digit addition with the paper's scratchpad, generated from a seed.

Text format for 29 + 57 (the prompt ends after "Target:\\n"):

  Input:
  2 9 + 5 7
  Target:
  <scratch>
  2 9 + 5 7 , C: 0
  2 + 5 , 6 C: 1
  , 8 6 C: 0
  0 8 6
  </scratch>
  8 6
  <blank line>

Digits are separated by spaces so every digit is its own token (``digit_spaces=False``:
"29 + 57", for tokenizers that split digits already; ``sum_lines=True``: each step's digit
sum, "9 + 7 + 0 = 16", on a line of its own before the step). Each scratch
line is one step: the digits still to add, then (after ",") the sum digits so
far and the carry. The first line is the problem with carry 0; the last scratch
line is the final carry followed by the digits; the line after </scratch> is
the sum. When one number runs out of digits its side is left empty
("9 9 + , 0 C: 1" for 999 + 1). The hint (rationalization) is a "Hint: 8 6"
line after the problem. A completion with an empty rationale is the direct
format: just the sum line (for a direct-answer baseline).

Because problems are generated, the true scratchpad is known
(`meta['scratchpad']`), which lets `step_correct` / `step_accuracy` measure
per-step correctness of generated rationales (RL-STaR's delta).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Iterator

import numpy as np

from star_jax.data.data_config import DataConfig
from star_jax.runtime.declared import key
from star_jax.runtime.errors import ConfigError
from star_jax.tasks.base import Example, Task, check_split, first_block, register_task
from star_jax.tasks.line_positions import LineColumnPositions, break_ids_of
from star_jax.tasks.scratchpad import (  # noqa: F401  (scratch_body re-exported)
    SCRATCH_CLOSE, SCRATCH_OPEN, scratch_body, scratch_lines, step_correct)

_DIGITS_LINE_RE = re.compile(r"[0-9](?: ?[0-9])*")
_DIGIT_SPACE_RE = re.compile(r"(?<=[0-9]) (?=[0-9])")
_LAST_STEP_RE = re.compile(rf", ({_DIGITS_LINE_RE.pattern}) C: ([0-9])")  # ", 8 6 C: 0"


def spaced(digits: int | str) -> str:
  return " ".join(str(digits))


def scratchpad_lines(a: int, b: int, sums: bool = False) -> list[str]:
  """The true scratchpad of a + b, one string per step (no tags). ``sums``: before each
  digit's line, the digit sum it adds as a line of its own ("9 + 7 + 0 = 16")."""
  if a < 0 or b < 0:
    raise ValueError(f"only non-negative addends are supported, got {a} + {b}")
  rest_a, rest_b = str(a), str(b)
  lines = [f"{spaced(rest_a)} + {spaced(rest_b)} , C: 0"]
  carry, out = 0, ""
  while rest_a or rest_b:
    x = int(rest_a[-1]) if rest_a else 0
    y = int(rest_b[-1]) if rest_b else 0
    if sums:
      lines.append(f"{x} + {y} + {carry} = {spaced(x + y + carry)}")
    carry, digit = divmod(x + y + carry, 10)
    out = str(digit) + out
    rest_a, rest_b = rest_a[:-1], rest_b[:-1]
    todo = f"{spaced(rest_a)} + {spaced(rest_b)}".strip() if rest_a or rest_b else ""
    lines.append(f"{todo} , {spaced(out)} C: {carry}".lstrip())
  lines.append(spaced(f"{carry}{out}"))
  return lines


def compact(text: str) -> str:
  """``text`` with the spaces between digits removed: "0 8 6" -> "086", "2 9 + 5 7 , C: 0" ->
  "29 + 57 , C: 0" (no two numbers of a scratch line are separated by a space alone)."""
  return _DIGIT_SPACE_RE.sub("", text)


def scratchpad(a: int, b: int) -> str:
  """The true scratchpad of a + b as text, tags included (the gold rationale in context)."""
  return "\n".join([SCRATCH_OPEN, *scratchpad_lines(a, b), SCRATCH_CLOSE])


def _number_range(digits: int) -> tuple[int, int]:
  return (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1


def _in_eval_partition(a: int, b: int, seed: int, eval_fraction: float) -> bool:
  # A fixed hash of the problem decides its side, so train and eval are disjoint
  # whatever their sizes, and neither set depends on the other's size.
  h = hashlib.blake2b(f"{seed}:{a}+{b}".encode(), digest_size=8).digest()
  return int.from_bytes(h, "big") < eval_fraction * 2.0 ** 64


_ENUMERATE_UP_TO = 50_000  # problem spaces this small are listed, not sampled by rejection
_INT64_MAX = 2 ** 63 - 1


def _draw(rng: np.random.Generator, lo: int, hi: int) -> int:
  """A uniform integer in [lo, hi]: numpy's draw where int64 holds it (so the shorter
  lengths' problems are what they always were), else Python's exact one, seeded from ``rng``
  (19+ digits)."""
  if hi < _INT64_MAX:
    return int(rng.integers(lo, hi + 1))
  return random.Random(int(rng.integers(_INT64_MAX))).randint(lo, hi)


def generate(split: str, count: int, seed: int, min_digits: int, max_digits: int,
             eval_fraction: float = 0.1, same_length: bool = True) -> list[tuple[int, int]]:
  """Up to `count` (a, b) pairs, both with the same number of digits drawn uniformly in
  [min_digits, max_digits] (with ``same_length=False`` each addend draws its own);
  deterministic in `seed`. Train and eval never share a problem. Train pairs may repeat
  (there are only 100 one-digit problems). Eval pairs are distinct, so every held-out
  problem counts once: a digit count whose held-out problems run out (one-digit: about 10)
  gets fewer than its share, and the set can be smaller than `count`."""
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
  want_eval = split == "eval"
  rng = np.random.default_rng([seed, 1 if want_eval else 0])
  pairs, seen = [], set()
  pools: dict[tuple[int, int], Iterator[tuple[int, int]]] = {}  # small spaces, eval only
  for _ in range(count):
    digits = int(rng.integers(min_digits, max_digits + 1))
    digits_b = digits if same_length else int(rng.integers(min_digits, max_digits + 1))
    (lo, hi), (lo_b, hi_b) = _number_range(digits), _number_range(digits_b)
    if want_eval and (hi - lo + 1) * (hi_b - lo_b + 1) <= _ENUMERATE_UP_TO:
      if (digits, digits_b) not in pools:
        space = [(a, b) for a in range(lo, hi + 1) for b in range(lo_b, hi_b + 1)
                 if _in_eval_partition(a, b, seed, eval_fraction)]
        if not space:
          raise ValueError(f"no {digits}-digit problem falls in the eval partition; "
                           f"change task_options.eval_fraction ({eval_fraction}) or the digit range")
        pools[digits, digits_b] = iter([space[i] for i in rng.permutation(len(space))])
      pair = next(pools[digits, digits_b], None)
      if pair is not None:
        pairs.append(pair)
      continue
    for _ in range(10_000):
      a, b = _draw(rng, lo, hi), _draw(rng, lo_b, hi_b)
      if _in_eval_partition(a, b, seed, eval_fraction) == want_eval and (a, b) not in seen:
        break
    else:
      raise ValueError(f"no {digits}-digit problem falls in the {split} partition; "
                       f"change task_options.eval_fraction ({eval_fraction}) or the digit range")
    if want_eval:
      seen.add((a, b))
    pairs.append((a, b))
  return pairs


def generate_by_digits(counts, seed: int, eval_fraction: float = 0.1,
                       stream: tuple[int, ...] = (2,)) -> list[tuple[int, int]]:
  """Distinct train-partition pairs, ``counts[d - 1]`` of them with d digits each (a seed set
  with a chosen mix of lengths, e.g. (90, 1500, 1500, 30, 15)), lengths shuffled together.

  The partition is the one of ``seed`` (the data seed), so the pairs never include a held-out
  problem of a run with the same data seed; they come from their own random stream, not the
  train pool's (``stream`` picks it: the few-shot exemplars draw from their own). A length whose
  train partition has fewer problems than asked (one digit: about 90) gives them all.
  """
  rng = np.random.default_rng([seed, *stream])
  pairs = []
  for digits, count in enumerate(counts, start=1):
    count = int(count)
    if count <= 0:
      continue
    lo, hi = _number_range(digits)
    if (hi - lo + 1) ** 2 <= _ENUMERATE_UP_TO:
      space = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)
               if not _in_eval_partition(a, b, seed, eval_fraction)]
      pairs += [space[i] for i in rng.permutation(len(space))[:count]]
      continue
    seen: set[tuple[int, int]] = set()
    while len(seen) < count:
      a, b = _draw(rng, lo, hi), _draw(rng, lo, hi)
      if (a, b) not in seen and not _in_eval_partition(a, b, seed, eval_fraction):
        seen.add((a, b))
        pairs.append((a, b))
  return [pairs[i] for i in rng.permutation(len(pairs))]


@register_task("arithmetic")
class ArithmeticTask(Task):
  """Addition of two n-digit numbers; ``data.max_train`` / ``data.max_eval`` are the counts
  to generate, ``data.seed`` picks them, the digit ranges are options."""

  name = "arithmetic"
  difficulty_name = "digits"
  difficulty_label = "{} digits"
  step_choices = 10  # a scratch step writes one sum digit
  # A completion of 8-digit problems is 353 characters: enough even at one token per character.
  max_new_tokens = 360
  default_train, default_eval = 50_000, 1_000  # the paper's 50k problems

  @dataclasses.dataclass(frozen=True)
  class Options:
    """Arithmetic's keys (``task_options``): its positions, prompts and problems."""
    positions: str = key("sequence", "sequence (the token index) | line_column ((line, column) "
                         "rotary positions: see line_positions.py)",
                         choices=("sequence", "line_column"))
    right_aligned_columns: bool = key(False, "line_column: count columns from the end of the "
                                      "line above")
    position_jitter: int = key(0, "line_column: space lines and columns by random gaps in "
                               "training (0 = none)")
    digit_spaces: bool = key(True, "False: digits written together (\"29 + 57\", not \"2 9 + 5 "
                             "7\"), for tokenizers that split every digit already (SmolLM2, "
                             "Llama 3): the same steps in fewer tokens")
    sum_lines: bool = key(False, "each scratch step first writes the digit sum it adds as a "
                          "line of its own (\"9 + 7 + 0 = 16\"): the operands next to the "
                          "sum, as pre-training text has them")
    both_columns: bool = key(False, "line_column with right_aligned_columns: a third of the "
                             "rotary frequencies also turn with the column from the line's "
                             "start")
    shots: int = key(0, "0 = the two fixed exemplars before every query; k = k exemplars with "
                     "the query's number of digits (paper section 4.1), from the train partition")
    min_digits: int = key(1, "digits of the train problems' addends, from...")
    max_digits: int = key(5, "...to")
    eval_min_digits: int = key(0, "digits of the eval problems, from (0 = min_digits)...")
    eval_max_digits: int = key(0, "...to (0 = max_digits)")
    same_length: bool = key(True, "False: each addend draws its own digit count (difficulty: "
                            "the larger)")
    final_from_steps: bool = key(False, "a rationale supports its answer only if the last "
                                 "line is also the carry and digits of the scratch line above "
                                 "it, so a hint copied under a broken scratchpad is unsupported")
    eval_fraction: float = key(0.1, "share of the problem space held out for eval")
    completion_margin: float = key(0.0, "> 0: a completion stops at the right one's tokens x "
                                   "(1 + margin), not max_new_tokens (longer is wrong already)")
    digit_counts: tuple = key((), "train only: distinct problems per digit count 1, 2, ... "
                              "(a seed set, e.g. (90, 1000, 1000, 120, 120)); replaces "
                              "data.max_train and the digit range")

  def __init__(self, options: "ArithmeticTask.Options | None" = None,
               max_new_tokens: int | None = None):
    """With ``shots`` = k, the same k exemplars for every query of that length and data seed,
    drawn from the train partition (never a held-out problem) and never the query itself."""
    super().__init__(options, max_new_tokens)
    o = self.options
    if int(o.shots) < 0:
      raise ConfigError(f"task_options.shots must be >= 0, got {o.shots}")
    self._k = int(o.shots)
    self._shots_by: dict[tuple[int, int, float], list[Example]] = {}
    self._positions = (o.positions, bool(o.right_aligned_columns), int(o.position_jitter),
                       bool(o.both_columns))
    self._fmt = (lambda text: text) if o.digit_spaces else compact
    self._sums = bool(o.sum_lines)
    if not o.digit_spaces and o.positions != "sequence":
      raise ConfigError("task_options.digit_spaces=False needs positions='sequence': the "
                        "line_column positions count one token per digit and space")
    self._shots = [self.make_example(a, b, f"arith-shot-{i}")
                   for i, (a, b) in enumerate(((38, 45), (706, 598)))]

  @staticmethod
  def make_example(a: int, b: int, ex_id: str, partition: tuple[int, float] = (0, 0.1)
                   ) -> Example:
    """``partition``: the (data seed, eval_fraction) that split the problem space the example
    came from, so length-matched exemplars are drawn from its train side."""
    digits = max(len(str(a)), len(str(b)))
    return Example(id=ex_id, question=f"{a} + {b}", answer=str(a + b),
                   meta={"a": a, "b": b, "digits": digits, "partition": tuple(partition),
                         "scratchpad": tuple(scratchpad_lines(a, b))})

  def exemplars(self) -> list[Example]:
    """The fixed two; with ``shots`` = k, the k of a 5-digit query (the default longest), the
    longest prompt for whoever sizes one from it."""
    return list(self._shots) if not self._k else self.shots_for(5)

  def shots_for(self, digits: int, seed: int = 0, eval_fraction: float = 0.1
                ) -> list[Example]:
    """k + 1 distinct train-partition problems of ``digits`` digits, fixed by (digits, seed):
    the query's k exemplars are the first k of them that are not the query."""
    key = (int(digits), int(seed), float(eval_fraction))
    if key not in self._shots_by:
      pairs = generate_by_digits([0] * (digits - 1) + [self._k + 1], seed, eval_fraction,
                                 stream=(3, digits))  # a stream per length: uncorrelated
      self._shots_by[key] = [self.make_example(a, b, f"arith-shot-{digits}-{i}", key[1:])
                             for i, (a, b) in enumerate(pairs)]
    return self._shots_by[key]

  def _shots_of(self, ex: Example) -> list[Example]:
    if not self._k:
      return self._shots
    seed, fraction = ex.meta.get("partition", (0, 0.1))
    shots = self.shots_for(ex.meta["digits"], seed, fraction)
    return [s for s in shots if (s.meta["a"], s.meta["b"]) != (ex.meta["a"], ex.meta["b"])
            ][:self._k]

  def positions(self, tokenizer) -> LineColumnPositions | None:
    kind, right_aligned, jitter, both = self._positions
    if kind == "sequence":
      return None
    return LineColumnPositions(break_ids_of(tokenizer), right_aligned, jitter, both)

  def load(self, split: str, data: DataConfig) -> list[Example]:
    check_split(split)
    o = self.options
    lo, hi = int(o.min_digits), int(o.max_digits)
    if split == "eval":
      lo, hi = int(o.eval_min_digits or lo), int(o.eval_max_digits or hi)
    partition = (int(data.seed), float(o.eval_fraction))
    if split == "train" and o.digit_counts:
      pairs = generate_by_digits(tuple(o.digit_counts), *partition)
      return [self.make_example(a, b, f"arith-seed-{i:06d}", partition)
              for i, (a, b) in enumerate(pairs)]
    count = data.limit(split) or (self.default_train if split == "train" else self.default_eval)
    pairs = generate(split, count, partition[0], lo, hi, partition[1], bool(o.same_length))
    return [self.make_example(a, b, f"arith-{split}-{i:06d}", partition)
            for i, (a, b) in enumerate(pairs)]

  def _query(self, ex: Example, hint: bool) -> str:
    problem = self._fmt(f"{spaced(ex.meta['a'])} + {spaced(ex.meta['b'])}")
    hint_line = f"Hint: {self._fmt(spaced(ex.answer))}\n" if hint else ""
    return f"Input:\n{problem}\n{hint_line}Target:\n"

  def prompt(self, ex: Example, hint: bool = False, few_shot: bool = True) -> str:
    shots = self._shots_of(ex) if few_shot else []
    parts = [self._query(s, hint) + self.completion(self.gold_rationale(s), s) for s in shots]
    return "".join(parts) + self._query(ex, hint)

  def completion(self, rationale: str, ex: Example) -> str:
    if not isinstance(ex, Example):
      raise TypeError(f"completion(rationale, ex) takes the Example, got {type(ex).__name__}")
    rationale = rationale.strip("\n")
    answer = self._fmt(spaced(ex.answer)) + self.end_marker
    if not rationale.strip():
      return answer  # direct format
    return f"{SCRATCH_OPEN}\n{rationale}\n{SCRATCH_CLOSE}\n{answer}"

  def true_lines(self, ex: Example) -> list[str]:
    """The true scratch lines of ``ex`` in this task's format (digit spaces, sum lines)."""
    lines = (scratchpad_lines(ex.meta["a"], ex.meta["b"], sums=True) if self._sums
             else ex.meta["scratchpad"])
    return [self._fmt(line) for line in lines]

  def gold_rationale(self, ex: Example) -> str:
    return "\n".join(self.true_lines(ex))

  def difficulty(self, ex: Example) -> int:
    return ex.meta["digits"]

  def extract_answer(self, text: str) -> str | None:
    """Digits of the line after </scratch> (or of a lone direct-answer line), e.g. "86"."""
    if not isinstance(text, str):
      return None
    block = first_block(text, self.end_marker)
    if SCRATCH_CLOSE in block:
      block = block.split(SCRATCH_CLOSE, 1)[1]
    elif SCRATCH_OPEN in block:
      return None  # the scratchpad never closed: no committed answer
    lines = [l.strip() for l in block.split("\n") if l.strip()]
    if not lines or not _DIGITS_LINE_RE.fullmatch(lines[0]):
      return None
    return str(int(lines[0].replace(" ", "")))

  def is_correct(self, prediction: str | None, ex: Example) -> bool:
    if prediction is None or not re.fullmatch(r"[0-9]+", prediction.strip()):
      return False
    return int(prediction) == int(ex.answer)

  def split_rationale(self, text: str) -> str:
    """Scratch lines between the tags (the tags themselves are re-added by `completion`),
    without any hint line a model copied into them: a hint is never trained on."""
    body = scratch_body(text, self.end_marker)
    return "\n".join(line for line in body.split("\n") if not line.startswith("Hint:"))

  def rationale_supports(self, rationale: str, ex: Example) -> bool:
    """The last scratch line (final carry and digits, "0 8 6" for 86) is the answer; with
    ``final_from_steps`` it must also be the carry and digits of the line above it
    (", 8 6 C: 0"), so a broken scratchpad ending in the copied hint does not count."""
    lines = [l for l in scratch_lines(rationale, self.end_marker) if l]
    if not lines or not _DIGITS_LINE_RE.fullmatch(lines[-1]):
      return False
    if int(lines[-1].replace(" ", "")) != int(ex.answer):
      return False
    if not self.options.final_from_steps:
      return True
    above = _LAST_STEP_RE.fullmatch(lines[-2]) if len(lines) > 1 else None
    return bool(above) and (above[2] + above[1]).replace(" ", "") == lines[-1].replace(" ", "")

  def step_correct(self, rationale: str, ex: Example) -> list[bool]:
    return step_correct(rationale, ex, self.end_marker, self.true_lines(ex))

  def path_key(self, rationale: str) -> str:
    """The sequence of scratch lines, each with its spacing collapsed."""
    return "\n".join(" ".join(l.split()) for l in scratch_lines(rationale, self.end_marker))

