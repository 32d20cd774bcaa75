"""Methods one key apart (``star.method``): STaR and the controls it is compared with, each
an ``iteration.Method`` run with STaR's budget: the same base model, iterations, steps and
batch size, and the same evaluation after every iteration.

  star       the paper's iteration (iteration.py)
  direct     fine-tuning on the bare answers of every train question (all of D, whatever
             star.questions_per_iteration), no rationale (the paper's "direct fine-tuned"
             baseline; arithmetic: the sum line alone)
  seed_only  more training on the seed set P alone, the data the base model was made from:
             a STaR lift is then more than more steps
"""

from __future__ import annotations

import time

from star_jax.runtime.errors import ConfigError, did_you_mean
from star_jax.star import finetune as ft, seed
from star_jax.star.iteration import IterationResult, Method, Star


class Direct(Method):
  name = "direct"

  def iteration(self, n: int, base, model) -> IterationResult:
    questions = self.exp.train_set  # all of D: the strongest answers-only baseline of the budget
    examples = ft.training_examples(self.task, self.tokenizer, [(ex, "") for ex in questions],
                                    few_shot=self.star.few_shot_in_training)
    return self._train(n, base, model, questions, examples)

  def _train(self, n, base, model, questions, examples) -> IterationResult:
    t0 = time.time()
    params, stats = self.fine_tune(n, base if self.star.restart_from_base else model, examples,
                                   self.name)
    return IterationResult(self.name, params, questions, [], train=stats,
                           train_seconds=time.time() - t0)


class SeedOnly(Direct):
  name = "seed_only"

  def iteration(self, n: int, base, model) -> IterationResult:
    return self._train(n, base, model, [], seed.seed_examples(self.config, self.exp))


METHODS: dict[str, type[Method]] = {m.name: m for m in (Star, Direct, SeedOnly)}


def register_method(cls: type[Method]) -> type[Method]:
  """Adds a ``Method`` subclass to what ``star.method`` picks from, by its ``name``."""
  if not (isinstance(cls, type) and issubclass(cls, Method) and cls.name):
    raise TypeError(f"{cls!r} is not a named Method subclass")
  if METHODS.get(cls.name, cls) is not cls:
    raise ValueError(f"method name {cls.name!r} is already registered to {METHODS[cls.name]}")
  METHODS[cls.name] = cls
  return cls


def get_method(name: str) -> type[Method]:
  if name not in METHODS:
    raise ConfigError(f"star.method must be one of {sorted(METHODS)}, got {name!r}"
                      f"{did_you_mean(name, METHODS)}")
  return METHODS[name]
