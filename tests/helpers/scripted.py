"""A STaR run without a model: a character tokenizer, a sampler that answers from a script,
and an ``Experiment`` around them, so an iteration's logic runs in milliseconds.

``ScriptedSampler(task, examples, script)`` answers each prompt with ``script(ex, hint)``
(the completion text for question ``ex``, asked with or without the hint; a list: one text
per sample, n of them) and records every call: which params and sampling it sampled with
and which (question, hint) pairs it was asked. A script with a third argument also gets the
call's temperature. A problem
that is in ``examples`` twice (arithmetic's train sets repeat some) is recorded as one of them.
With ``tokenizer`` (a run's own) the texts come back in its ids, so a whole run
(``star.run``, its sampler replaced) answers from the script.
"""

import dataclasses
import inspect
import types
from typing import Callable

import numpy as np

from star_jax.experiment.build import Experiment
from star_jax.tasks import Example, Task


class CharTokenizer:
  """One id per character: ``decode(encode(text)) == text`` for any text."""

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    return [ord(c) for c in text]

  encode_prompt = encode

  def decode(self, ids) -> str:
    return "".join(map(chr, ids))


@dataclasses.dataclass
class Call:
  params: object  # what the sampler was given: the sampled model
  asked: list[tuple[Example, bool]]  # (question, hint) per prompt, in order
  sampling: object = None  # the SamplingParams of the call
  n: int = 1  # samples per prompt


class _Output:
  """Texts per prompt and sample; each text's tokens carry its score as their log-probability
  (a script's (text, score) item; 0 for a bare text), so its mean log-probability is the
  score."""

  def __init__(self, items: list[list], tokenizer=None):
    self.tokenizer = tokenizer or CharTokenizer()
    items = [[it if isinstance(it, tuple) else (it, 0.0) for it in row] for row in items]
    self.texts = [[text for text, _ in row] for row in items]
    longest = max((len(self.sequences(i, j)) for i, row in enumerate(items)
                   for j in range(len(row))), default=0)
    self.logprobs = np.zeros((len(items), max(map(len, items), default=0), longest), np.float32)
    for i, row in enumerate(items):
      for j, (_, score) in enumerate(row):
        self.logprobs[i, j, :len(self.sequences(i, j))] = score

  def sequences(self, prompt: int, sample: int = 0) -> list[int]:
    return self.tokenizer.encode(self.texts[prompt][sample])


class ScriptedSampler:
  """Answers every prompt of ``examples`` (with or without hint and exemplars) by ``script``."""

  def __init__(self, task: Task, examples: list[Example],
               script: Callable[[Example, bool], str], tokenizer=None):
    self.cfg = types.SimpleNamespace(max_seq_len=1 << 16)
    self.tokenizer = tokenizer
    self.script, self.calls = script, []
    self._temperature = len(inspect.signature(script).parameters) > 2
    self._asked = {task.prompt(ex, hint=hint, few_shot=few_shot): (ex, hint)
                   for ex in examples for hint in (False, True) for few_shot in (False, True)}

  def sample(self, params, prompts, max_new_tokens, sampling, n=1, seed=0, stop_strings=(),
             decode_fn=None, progress=None, first_index=0) -> _Output:
    asked = [self._asked[decode_fn(p)] for p in prompts]
    self.calls.append(Call(params, asked, sampling, n))
    if progress is not None:
      progress(len(prompts) * n)
    extra = (sampling.temperature,) if self._temperature else ()
    outs = [self.script(ex, hint, *extra) for ex, hint in asked]
    outs = [list(o) if isinstance(o, list) else [o] * n for o in outs]
    assert all(len(o) == n for o in outs), "a script's list must hold n texts"
    return _Output(outs, self.tokenizer)


def experiment(task: Task, train: list[Example], evals: list[Example] = ()) -> Experiment:
  """An ``Experiment`` with no model: ``params`` is a one-leaf tree (the base model, zeros)."""
  return Experiment(task, list(train), list(evals), CharTokenizer(), mesh=None, model_cfg=None,
                    graphdef=None, params={"w": np.zeros(2, np.float32)})
