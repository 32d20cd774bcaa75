"""Methods one key apart (``star.method``): STaR and the controls it is compared with, each
an ``iteration.Method`` run with STaR's budget: the same base model, iterations, steps and
batch size, and the same evaluation after every iteration.

  star       the paper's iteration (iteration.py)
  direct     fine-tuning on the bare answers of every train question (all of D, whatever
             star.questions_per_iteration), no rationale (the paper's "direct fine-tuned"
             baseline; arithmetic: the sum line alone)
  seed_only  more training on the seed set P alone, the data the base model was made from:
             a STaR lift is then more than more steps

and the STaR family, each reusing Star's steps (docs/variants.md):

  rest_em  ReST-EM (Singh et al. 2023, arXiv 2312.06585): k samples per question at a
           temperature, the right ones kept (repeats too) up to a cap per question, no
           rationalization; the paper fine-tunes from the base model every iteration
           (star.samples_per_question, star.temperature, star.max_kept_per_question,
           star.restart_from_base=True)
  rft      RFT, rejection-sampling fine-tuning (Yuan et al. 2023, arXiv 2308.01825):
           ReST-EM's sampling, keeping one rationale per distinct reasoning path
           (``Task.path_key``: arithmetic's scratch lines, GSM8K's equations, CQA's
           normalised text)
  bstar    B-STaR (Zeng et al. 2024, arXiv 2412.17256): every iteration first samples a
           probe subset at each candidate temperature (star.bstar_temperatures), scores
           each by the balance score (keep.balance_score) and samples the iteration at the
           best; distinct paths as RFT. Samples carry no reward-model score here, so there
           is no keep threshold to choose: the keep rule is the answer check.

Every one logs ``distinct_paths_per_question``; bstar also its probe's scores and choice
(``bstar_*`` in metrics.jsonl). docs/variants.md has the recipes and their comparison.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from star_jax.runtime.errors import ConfigError, did_you_mean
from star_jax.star import finetune as ft, keep as keep_lib, seed
from star_jax.star.iteration import IterationResult, Method, Star


class Direct(Method):
  name = "direct"

  def iteration(self, n: int, base, model) -> IterationResult:
    questions = self.question_pool(n)  # all of D: the strongest answers-only baseline
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


class RestEM(Star):
  """Star's iteration without rationalization: k samples a question, the right ones kept."""

  name = "rest_em"
  distinct = "sample"  # every right sample up to the cap, repeats included (the paper's)

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    if self.star.samples_per_question < 2 or self.star.temperature <= 0:
      logging.warning("%s samples %d per question at temperature %g: the recipe samples several "
                      "at a temperature (docs/variants.md)", self.name,
                      self.star.samples_per_question, self.star.temperature)

  def rationalize(self, n, model, failed, rng, seed):
    return [], 0


class RFT(RestEM):
  """ReST-EM's sampling, keeping one rationale per distinct reasoning path."""

  name = "rft"
  distinct = "path"


class BStar(RestEM):
  """Each iteration samples at the temperature that maximises the balance score on a probe."""

  name = "bstar"
  distinct = "path"

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    star = self.star
    if not star.bstar_temperatures or min(star.bstar_temperatures) <= 0:
      raise ConfigError(f"star.bstar_temperatures must be temperatures > 0, got "
                        f"{star.bstar_temperatures!r}")
    if star.bstar_n0 < 1 or star.bstar_probe_questions < 1:
      raise ConfigError("star.bstar_n0 and star.bstar_probe_questions must be >= 1")
    self._temperature: float | None = None

  def sampling(self, temperature=None):
    return super().sampling(self._temperature if temperature is None else temperature)

  def iteration(self, n: int, base, model) -> IterationResult:
    t0 = time.time()
    scores = self.probe(n, model)
    best = max(scores, key=scores.get)  # ties: the first candidate listed
    probe_seconds = time.time() - t0
    logging.info("iteration %d: B-STaR balance scores %s: sampling at temperature %g", n,
                 {t: round(s, 4) for t, s in scores.items()}, best)
    self._temperature = best
    try:
      result = super().iteration(n, base, model)
    finally:
      self._temperature = None
    result.extra.update({"bstar_temperature": best, "bstar_score": scores[best],
                         "bstar_scores": {str(t): s for t, s in scores.items()},
                         "bstar_probe_seconds": probe_seconds})
    return result

  def probe(self, n: int, model) -> dict[float, float]:
    """The balance score of each candidate temperature on ``bstar_probe_questions`` train
    questions, k samples each (the same questions and seed for every candidate)."""
    star, train = self.star, self.question_pool(n)
    rng = np.random.default_rng([self.config.seed, n, 29])
    m = min(star.bstar_probe_questions, len(train))
    questions = [train[i] for i in np.sort(rng.choice(len(train), m, replace=False))]
    few_shot = star.few_shot if n == 1 else star.few_shot_in_training
    scores = {}
    for i, t in enumerate(star.bstar_temperatures):
      self._temperature = float(t)
      gens, _ = self.sample(n, model, questions, hint=False, phase=f"probe_{i}",
                            few_shot=few_shot, seed=self.config.seed * 1000 + n + 700)
      scores[float(t)] = keep_lib.balance_score(self.task, gens, star.bstar_n0,
                                                star.require_supported)
    self._temperature = None
    return scores


METHODS: dict[str, type[Method]] = {m.name: m for m in (Star, Direct, SeedOnly, RestEM, RFT,
                                                         BStar)}


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
