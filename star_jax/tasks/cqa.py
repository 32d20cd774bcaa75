"""CommonsenseQA: five-way multiple choice with a short rationale.

Text format (one exemplar; the prompt ends after "A:"):

  Q: Where should you put a stamped letter so that it gets delivered?
  Answer Choices:
  (a) desk drawer
  (b) mailbox
  ...
  A: Letters are delivered by the postal service, ... Therefore, the answer is mailbox.
  <blank line>

The hint (rationalization) appends " (CORRECT)" to the gold choice, in the
exemplars and in the query. An answer names the choice text, its shown label or
both (they must then agree).

Two defaults answer what SmolLM2-135M does with this prompt (docs/cqa.md): the
answer phrase names the text alone (with "text (label)" the model wrote the
letter of one fixed position, "(d)", whatever text it chose: 70% of answers
contradicted themselves), and a question's choices are shown in an order of
its own (a permutation seeded by its id: the model picks the last listed choice
almost half the time, and a fixed order turns that into a preference for
label E). ``label_in_answer=True`` and ``shuffle_choices=False`` restore the
paper's layout.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np

from star_jax.data.builders import load_records
from star_jax.data.data_config import DataConfig
from star_jax.runtime.declared import key
from star_jax.tasks.base import (Example, Task, check_split, first_block, last_match, register_task,
                                 take_subset)

HINT_MARK = "(CORRECT)"
ANSWER_PREFIX = "Therefore, the answer is"
# Where the answer phrase starts in generated text; the connective is optional
# so "So the answer is" and a bare "the answer is" count too.
_ANSWER_RE = re.compile(r"(?:\b(?:therefore|so|thus)\s*,?\s*)?\bthe answer is\b", re.IGNORECASE)
_HINT_RE = re.compile(r"\s*\(correct\)", re.IGNORECASE)

# Our own exemplars (not the paper's): (stem, choices a-e, gold label, rationale).
_SHOTS = (
    ("Where should you put a stamped letter so that it gets delivered?",
     ("desk drawer", "mailbox", "bookshelf", "refrigerator", "garbage can"), "B",
     "Letters are delivered by the postal service, which collects mail from mailboxes."),
    ("The boy wanted to see giraffes up close, so where did his parents take him?",
     ("zoo", "library", "ocean", "dentist", "bakery"), "A",
     "Giraffes are wild animals, and a zoo is where people can see wild animals up close."),
    ("What can happen to you if you stay in the hot sun all day without drinking water?",
     ("catch a cold", "grow taller", "become dehydrated", "learn to swim", "fall asleep"), "C",
     "The body loses water by sweating in the heat, and without drinking it runs short of "
     "water."),
    ("If you want to cut a sheet of paper neatly, which tool would you use?",
     ("hammer", "spoon", "glue", "scissors", "pencil"), "D",
     "Scissors have sharp blades made for cutting thin things like paper."),
    ("Where would you keep milk so that it does not spoil?",
     ("cupboard", "oven", "refrigerator", "windowsill", "backpack"), "C",
     "Milk spoils quickly when it is warm, and a refrigerator keeps food cold."),
    ("The audience clapped loudly at the end of the play because they what?",
     ("were asleep", "felt hungry", "lost their tickets", "were bored", "enjoyed it"), "E",
     "People clap at the end of a performance to show that they liked it."),
)


def _norm(text: str) -> str:
  return " ".join(text.lower().strip().strip("\"'").rstrip(".!?,;:").split())


@register_task("cqa")
class CommonsenseQATask(Task):
  """CommonsenseQA (official jsonl through the TFDS builder)."""

  name = "cqa"
  data_source = "commonsense_qa"  # its official files (data.sources.SOURCES)
  max_new_tokens = 128
  step_boundaries = (". ", "\n")  # sentences, and lines

  @dataclasses.dataclass(frozen=True)
  class Options:
    """CommonsenseQA's keys (``task_options``)."""
    shuffle_choices: bool = key(True, "show each question's choices in a fixed random order "
                                "(False: the file's order, the original STaR's)")
    label_in_answer: bool = key(False, "answer as 'text (label)' (the original STaR's format) "
                                "instead of the choice's text")

  def __init__(self, options: "CommonsenseQATask.Options | None" = None,
               max_new_tokens: int | None = None):
    super().__init__(options, max_new_tokens)
    self.shuffle_choices = bool(self.options.shuffle_choices)
    self.label_in_answer = bool(self.options.label_in_answer)
    self._shots = [
        Example(id=f"cqa-shot-{i}", question=stem, answer=gold,
                meta={"choices": tuple(zip("ABCDE", choices)), "rationale": rationale})
        for i, (stem, choices, gold, rationale) in enumerate(_SHOTS)
    ]

  def exemplars(self) -> list[Example]:
    return list(self._shots)

  def load(self, split: str, data: DataConfig) -> list[Example]:
    check_split(split)
    examples = self.examples(load_records(self.data_source, split, data))
    return take_subset(examples, data.limit(split), data.seed)

  @staticmethod
  def examples(records) -> list[Example]:
    """Examples of parsed CommonsenseQA records (``data.sources.parse_commonsense_qa``)."""
    return [Example(id=r["id"], question=r["question"], answer=r["answer_key"],
                    meta={"choices": tuple(zip(r["choice_labels"], r["choice_texts"])),
                          "concept": r["concept"], "line": r["index"]})
            for r in records]

  def shown_choices(self, ex: Example) -> list[tuple[str, str, str]]:
    """(shown label, dataset label, text) in the order the prompt lists them: the dataset's
    for exemplars, a permutation seeded by the question's id for queries."""
    choices = list(ex.meta["choices"])
    if self.shuffle_choices and not ex.id.startswith("cqa-shot-"):
      order = np.random.default_rng(zlib.crc32(ex.id.encode())).permutation(len(choices))
      choices = [choices[i] for i in order]
    return [(chr(ord("a") + i), label, text) for i, (label, text) in enumerate(choices)]

  def _query(self, ex: Example, hint: bool) -> str:
    lines = [f"Q: {ex.question}", "Answer Choices:"]
    for shown, label, text in self.shown_choices(ex):
      mark = f" {HINT_MARK}" if hint and label == ex.answer else ""
      lines.append(f"({shown}) {text}{mark}")
    lines.append("A:")
    return "\n".join(lines)

  def prompt(self, ex: Example, hint: bool = False, few_shot: bool = True) -> str:
    shots = self._shots if few_shot else []
    parts = [self._query(s, hint) + self.completion(s.meta["rationale"], s) for s in shots]
    return "".join(parts) + self._query(ex, hint)

  def answer_sentence(self, ex: Example) -> str:
    shown, text = next((s, t) for s, label, t in self.shown_choices(ex) if label == ex.answer)
    return f"{ANSWER_PREFIX} {text} ({shown})." if self.label_in_answer else (
        f"{ANSWER_PREFIX} {text}.")

  def completion(self, rationale: str, ex: Example) -> str:
    if not isinstance(ex, Example):
      raise TypeError("completion(rationale, ex) takes the Example (the answer text needs its "
                      f"choices), got {type(ex).__name__}")
    rationale = rationale.strip()
    body = f"{rationale} {self.answer_sentence(ex)}" if rationale else self.answer_sentence(ex)
    return f" {body}{self.end_marker}"

  def extract_answer(self, text: str) -> str | None:
    """The text after the last answer phrase of the first block, to the line end: "river (b)"."""
    if not isinstance(text, str):
      return None
    block = first_block(text, self.end_marker)
    m = last_match(_ANSWER_RE, block)
    if not m:
      return None
    span = block[m.end():].split("\n", 1)[0].strip().lstrip(":").strip()
    span = _HINT_RE.sub("", span).strip().rstrip(".").strip()
    return span or None

  def resolve_choice(self, prediction: str | None, ex: Example) -> str | None:
    """The dataset label of the choice `prediction` names (by its text or its shown label), or
    None if it names none or contradicts itself."""
    if not prediction:
      return None
    by_label = {shown: label for shown, label, _ in self.shown_choices(ex)}
    by_text: dict[str, list[str]] = {}
    for label, text in ex.meta["choices"]:
      by_text.setdefault(_norm(text), []).append(label)
    p = prediction.strip()
    m = re.fullmatch(r"\(?([A-Za-z])\)?\.?", p)
    if m and _norm(p) not in by_text:
      return by_label.get(m.group(1).lower())
    m = (re.fullmatch(r"(?P<text>.*?)\s*\((?P<label>[A-Za-z])\)\.?", p, re.DOTALL)
         or re.fullmatch(r"\((?P<label>[A-Za-z])\)\s*(?P<text>.*?)", p, re.DOTALL))
    if m:
      label = by_label.get(m.group("label").lower())
      named = by_text.get(_norm(m.group("text")), [])
      # The label decides, unless the text names a different choice.
      if label is None or (named and label not in named):
        return None
      return label
    named = by_text.get(_norm(p), [])
    if len(named) > 1:  # a text repeated among the choices (42 train questions): it is the
      return ex.answer if ex.answer in named else named[0]  # gold's text, or it is not
    return named[0] if named else None

  def predicted_label(self, prediction: str | None, ex: Example) -> str | None:
    return self.resolve_choice(prediction, ex)

  def chance_accuracy(self, ex: Example) -> float:
    return 1.0 / len(ex.meta["choices"])

  def multiple_choice(self, ex: Example) -> tuple[str, list[str], int]:
    """lm-evaluation-harness's CommonsenseQA scoring: zero-shot, the choice texts."""
    labels = [label for label, _ in ex.meta["choices"]]
    return (f"Question: {ex.question}\nAnswer:", [f" {t}" for _, t in ex.meta["choices"]],
            labels.index(ex.answer))

  def is_correct(self, prediction: str | None, ex: Example) -> bool:
    return self.resolve_choice(prediction, ex) == ex.answer

  def split_rationale(self, text: str) -> str:
    if not isinstance(text, str):
      return ""
    block = first_block(text, self.end_marker)
    m = last_match(_ANSWER_RE, block)
    rationale = block[:m.start()] if m else block
    # A rationale written under a hint must not carry the hint into training data.
    return _HINT_RE.sub("", rationale).strip()
