"""The Task interface: everything the STaR loop needs to know about one dataset.

A task turns its dataset into `Example`s and owns the text format around them:
the few-shot prompt, the rationalization hint, the training target, and how to
read an answer back out of generated text. The loop itself never looks inside
the text. To add a task, subclass `Task` in one module and register it:

  @register_task("mytask")
  class MyTask(Task):
    name = "mytask"
    ...

then `get_task("mytask")` (after importing the module), or without touching
star_jax at all: `get_task("my_pkg.my_module:MyTask")`.

The format contract every task keeps (the loop and the tests rely on it):
  * `prompt(ex)` ends exactly where the model starts writing its rationale.
  * `prompt(ex, hint=False) + completion(rationale, ex)` is one training text;
    the completion ends with `end_marker`, which is also in `stop_strings`.
  * `extract_answer` and `split_rationale` never raise, whatever the text.

Options: a task declares its own keys (``task_options`` in a config) as a frozen dataclass
``Options`` (every field a ``runtime.declared.key`` with default and comment); it gets
them, validated, as ``self.options``. ``load(split, data)`` reads the shared ``DataConfig``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from typing import Any, Callable

import numpy as np

from star_jax.data.data_config import DataConfig
from star_jax.runtime.errors import ConfigError, did_you_mean

SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem. `answer` is the gold answer in the task's canonical form
  (CQA: the choice label "A".."E"; GSM8K and arithmetic: a number as text).
  `meta` holds task-specific data (choices, digits, the true scratchpad, ...);
  treat it as read-only."""

  id: str
  question: str
  answer: str
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def has_words(rationale: str) -> bool:
  """Does ``rationale`` say anything? False for a direct answer (nothing before the answer
  phrase, or punctuation alone)."""
  return any(ch.isalnum() for ch in rationale)


class Task:
  """Base class; subclasses override the methods that raise NotImplementedError."""

  name: str = ""
  end_marker: str = "\n\n"  # ends every completion; few-shot exemplars are separated by it
  stop_strings: tuple[str, ...] = ("\n\n",)  # generation stops after one answer
  max_new_tokens: int = 128
  difficulty_name: str = "difficulty"  # metrics key: accuracy_by_<difficulty_name>
  difficulty_label: str = "{}"  # a bucket's name in plots, e.g. "{} digits"
  # Choices per rationale step (RL-STaR's M), for tasks whose `step_correct` knows the true
  # steps; None: no per-step diagnostics.
  step_choices: int | None = None
  # Where a step of a completion ends (the tree search's unit, and a string the sampler can
  # stop at): a line by default; sentence-level tasks add ". ".
  step_boundaries: tuple[str, ...] = ("\n",)
  # The official files it reads (a key of data.sources.SOURCES), checked before a run starts;
  # None for tasks that make their own problems.
  data_source: str | None = None

  @dataclasses.dataclass(frozen=True)
  class Options:
    """The task's own config keys (``task_options``); none by default."""

  def __init__(self, options: Any = None, max_new_tokens: int | None = None):
    self.options = options if options is not None else type(self).Options()
    if not isinstance(self.options, type(self).Options):
      raise TypeError(f"{type(self).__name__} takes {type(self).Options.__qualname__}, got "
                      f"{type(self.options).__name__}")
    if max_new_tokens is not None:
      self.max_new_tokens = int(max_new_tokens)

  def with_options(self, **changes: Any) -> "Task":
    """The same task with some options changed (the seed set P's data, say)."""
    return type(self)(make_options(type(self), {**dataclasses.asdict(self.options), **changes}),
                      self.max_new_tokens)

  def load(self, split: str, data: DataConfig) -> list[Example]:
    """All examples of `split` ('train' or 'eval'), or the seeded subset that
    `data.max_train` / `data.max_eval` ask for."""
    raise NotImplementedError

  def prompt(self, ex: Example, hint: bool = False, few_shot: bool = True) -> str:
    """Few-shot exemplars (if `few_shot`) then the query, ending where the
    rationale starts. `hint=True` adds the rationalization hint (to the
    exemplars too, so the model sees how hints are used)."""
    raise NotImplementedError

  def completion(self, rationale: str, ex: Example) -> str:
    """Training target after `prompt(ex, hint=False)`: the rationale, then the
    fixed answer phrase with the gold answer of `ex`, then `end_marker`."""
    raise NotImplementedError

  def extract_answer(self, text: str) -> str | None:
    """The answer the generated `text` commits to, or None. Never raises."""
    raise NotImplementedError

  def is_correct(self, prediction: str | None, ex: Example) -> bool:
    raise NotImplementedError

  def split_rationale(self, text: str) -> str:
    """The rationale part of generated `text` (before the answer phrase),
    stripped of any hint marker, ready for `completion(rationale, ex)`."""
    raise NotImplementedError

  def difficulty(self, ex: Example) -> int | None:
    """A difficulty bucket for per-difficulty accuracy, or None if the task has none."""
    return None

  def rationale_supports(self, rationale: str, ex: Example) -> bool:
    """Does the rationale itself reach the gold answer, not only the answer line after it?

    Tasks whose rationales end in a checkable result override this (arithmetic: the last
    scratch line; GSM8K: the number the last "=" gives, or the last number). With
    ``star.require_supported`` the loop keeps only rationales that pass, so a hint copied
    into the answer line after a wrong rationale is never trained on.

    The base rule, for tasks that cannot check more (cqa): a rationale must say something.
    An empty one (the model answered at once) reaches nothing; kept, it teaches M_n to
    answer without reasoning, and on CQA a third of SmolLM2's right answers were such
    (docs/cqa.md).
    """
    return has_words(rationale)

  def path_key(self, rationale: str) -> str:
    """What makes two reasoning paths the same (RFT keeps one rationale per key): by default
    the text, lower-cased with its whitespace collapsed. Tasks with structured steps say
    which steps define a path (arithmetic: the scratch lines; GSM8K: the equations)."""
    return " ".join(str(rationale).lower().split())

  def step_correct(self, rationale: str, ex: Example) -> list[bool] | None:
    """Per step of `rationale` (a generation or a kept rationale): is it the true step?

    Only tasks that know their true steps answer (arithmetic); None otherwise.
    Feeds RL-STaR's per-step accuracy and the share of kept rationales that reach
    the right answer through a wrong step.
    """
    return None

  def steps(self, completion: str) -> list[str]:
    """``completion`` (generated or a training completion) cut after each step boundary: each
    step keeps its boundary, so the steps joined are the completion and every prefix of them
    is a prefix of it (a node of a search over steps)."""
    out, start, i = [], 0, 0
    while i < len(completion):
      end = next((i + len(b) for b in self.step_boundaries if completion.startswith(b, i)), None)
      if end is None:
        i += 1
        continue
      out.append(completion[start:end])
      start = i = end
    if start < len(completion):
      out.append(completion[start:])
    merged: list[str] = []  # a step of boundaries alone (the blank line that ends a completion)
    for step in out:        # belongs to the step before it
      if merged and not step.strip():
        merged[-1] += step
      else:
        merged.append(step)
    return merged

  def step_accuracy(self, rationale: str, ex: Example) -> float | None:
    """Share of `rationale`'s steps that are the true ones (None: the task does not know)."""
    steps = self.step_correct(rationale, ex)
    return None if steps is None else sum(steps) / max(len(steps), 1)

  def chance_accuracy(self, ex: Example) -> float:
    """The accuracy of a random answer (multiple choice: 1 / choices); 0 for open answers."""
    return 0.0

  def predicted_label(self, prediction: str | None, ex: Example) -> str | None:
    """The choice label an extracted answer names (multiple choice); None otherwise."""
    return None

  def multiple_choice(self, ex: Example) -> tuple[str, list[str], int] | None:
    """(context, continuations, gold index) for log-likelihood scoring of the choices, the
    peers' usual multiple-choice metric; None for tasks without choices."""
    return None

  def positions(self, tokenizer) -> Any:
    """A position scheme for the decoder (see ``star_jax.engine.positions``) when the task's
    text needs positions other than the token index (arithmetic's (line, column) option);
    None: the index. Models built from scratch only: pre-trained ones keep theirs."""
    return None

  def gold_rationale(self, ex: Example) -> str | None:
    """A known-correct rationale, if the task can produce one (arithmetic can)."""
    return None

  def completion_limit(self, ex: Example, tokenizer) -> int:
    """Tokens a sampled completion of ``ex`` may take: ``max_new_tokens``; with the option
    ``completion_margin`` > 0 (a task whose right completion's length the question fixes,
    as arithmetic's scratchpad), the right completion's tokens x (1 + margin), at most that."""
    margin = float(getattr(self.options, "completion_margin", 0.0))
    if margin <= 0:
      return self.max_new_tokens
    right = len(tokenizer.encode(self.completion(self.gold_rationale(ex), ex)))
    return min(self.max_new_tokens, math.ceil(right * (1 + margin)))

  def exemplars(self) -> list[Example]:
    """The examples the few-shot prompt is made of (so callers can exclude them)."""
    return []

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.name!r}, max_new_tokens={self.max_new_tokens})"


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def first_block(text: str, marker: str) -> str:
  """Text up to the first `marker`: an answer only counts there, since anything
  after the end marker is the model starting another question."""
  return text.split(marker, 1)[0]


def last_match(pattern: re.Pattern, text: str) -> re.Match | None:
  """The last match: a rationale may say "the answer is" before its final answer."""
  m = None
  for m in pattern.finditer(text):
    pass
  return m


def take_subset(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
  """A seeded random subset of `limit` examples, kept in their original order.

  `limit` None or <= 0 keeps everything: nothing is dropped unless asked for.
  """
  if not limit or limit <= 0 or limit >= len(examples):
    return list(examples)
  keep = np.random.default_rng(seed).choice(len(examples), size=limit, replace=False)
  return [examples[i] for i in sorted(keep)]


def make_options(cls: type, values: Any, where: str = "task_options") -> Any:
  """``cls.Options`` from a mapping, each key checked: an unknown one names the nearest."""
  fields = {f.name: f for f in dataclasses.fields(cls.Options)}
  values = dict(values or {})
  for k in values:
    if k not in fields:
      known = ", ".join(fields) or "none"
      raise ConfigError(f"{where}.{k} is not an option of task {cls.name or cls.__name__!r}"
                        f"{did_you_mean(k, fields)}; its options: {known}")
  out = {}
  for k, v in values.items():
    if isinstance(v, list):
      v = tuple(v)
    choices = fields[k].metadata.get("choices")
    if choices and v not in choices:
      raise ConfigError(f"{where}.{k} must be one of {list(choices)}, got {v!r}")
    out[k] = v
  return cls.Options(**out)


def task_class(name: str) -> type:
  """The Task subclass of a registered name or a "module.path:ClassName"."""
  if ":" in name:
    module, _, attr = name.partition(":")
    try:
      cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
      raise ConfigError(f"cannot import task {name!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Task)):
      raise ConfigError(f"{name!r} is not a Task subclass")
    return cls
  if name not in _REGISTRY:
    raise ConfigError(f"unknown task {name!r}{did_you_mean(name, _REGISTRY)}; known tasks: "
                      f"{', '.join(available_tasks())} (or give 'module.path:ClassName')")
  return _REGISTRY[name]


_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str):
  """Class decorator adding a Task subclass to the `get_task` registry."""

  def wrap(cls):
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f"task name {name!r} is already registered to {_REGISTRY[name]}")
    _REGISTRY[name] = cls
    return cls

  return wrap


def available_tasks() -> list[str]:
  return sorted(_REGISTRY)


def get_task(name: str, max_new_tokens: int | None = None, **options: Any) -> Task:
  """A task instance by registered name, or by "module.path:ClassName", with its options."""
  cls = task_class(name)
  return cls(make_options(cls, options), max_new_tokens)
