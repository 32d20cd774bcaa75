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
           best; distinct paths as RFT. With star.bstar_thresholds it also chooses a keep
           threshold on each sample's mean token log-probability (the model's own
           confidence: star_jax has no reward model), every threshold and none scored on
           the same probe samples.

and the policy-gradient methods STaR is compared with (grpo.py): grpo (GRPO, Dr. GRPO with
rl.advantage=dr_grpo), grpo_hint (GRPO whose all-wrong groups are retried with STaR's hint)
and reinforce_rej (Reinforce-Rej), on the same steps x rows; and trice (trice.py: TRICE,
MCMC-EM over the rationale with a control variate).

Every one of the STaR family logs ``distinct_paths_per_question``; bstar also its probe's scores and choice
(``bstar_*`` in metrics.jsonl). docs/variants.md has the recipes and their comparison.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from star_jax.runtime.errors import ConfigError, did_you_mean
from star_jax.star import finetune as ft, keep as keep_lib, seed
from star_jax.star.grpo import GRPO, GRPOHint, ReinforceRej
from star_jax.star.iteration import IterationResult, Method, Star
from star_jax.star.mcts import Mcts
from star_jax.star.trice import Trice


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
    if self.verifier_texts(self.config) < 2:
      logging.warning("%s with %s: the recipe samples several a question at a temperature "
                      "(docs/variants.md)", self.name, self.sampling_keys(self.config))

  def rationalize(self, n, model, failed, rng, seed):
    return [], 0


class RFT(RestEM):
  """ReST-EM's sampling, keeping one rationale per distinct reasoning path."""

  name = "rft"
  distinct = "path"


class BStar(RestEM):
  """Each iteration samples at the temperature (and keeps above the score threshold) that
  maximises the balance score on a probe."""

  name = "bstar"
  distinct = "path"
  temperature_key = "star.bstar_temperatures"  # star.temperature is not read

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.check(self.config)
    self._temperature: float | None = None
    self._threshold: float | None = None

  @classmethod
  def temperatures(cls, config) -> tuple:
    return tuple(config.star.bstar_temperatures)

  @classmethod
  def check(cls, config) -> None:
    star = config.star
    if not star.bstar_temperatures or min(star.bstar_temperatures) <= 0:
      raise ConfigError(f"star.bstar_temperatures must be temperatures > 0, got "
                        f"{star.bstar_temperatures!r}")
    if star.bstar_n0 < 1 or star.bstar_probe_questions < 1:
      raise ConfigError("star.bstar_n0 and star.bstar_probe_questions must be >= 1")
    if any(t > 0 for t in star.bstar_thresholds):
      raise ConfigError(f"star.bstar_thresholds are mean token log-probabilities (<= 0), got "
                        f"{star.bstar_thresholds!r}")
    super().check(config)

  def sampling(self, temperature=None):
    return super().sampling(self._temperature if temperature is None else temperature)

  def min_score(self, source):
    return self._threshold if source == "generation" else None

  def iteration(self, n: int, base, model) -> IterationResult:
    t0 = time.time()
    scores = self.probe(n, model)
    best = max(scores, key=scores.get)  # ties: the first candidate listed
    probe_seconds = time.time() - t0
    logging.info("iteration %d: B-STaR balance scores %s: sampling at temperature %g%s", n,
                 {_label(*c): round(v, 4) for c, v in scores.items()}, best[0],
                 "" if best[1] is None else f", keeping mean log-prob >= {best[1]:g}")
    self._temperature, self._threshold = best
    try:
      result = super().iteration(n, base, model)
    finally:
      self._temperature = self._threshold = None
    result.extra.update({"bstar_temperature": best[0], "bstar_threshold": best[1],
                         "bstar_score": scores[best],
                         "bstar_scores": {_label(*c): v for c, v in scores.items()},
                         "bstar_probe_seconds": probe_seconds})
    return result

  def probe(self, n: int, model) -> dict[tuple[float, float | None], float]:
    """The balance score of each candidate (temperature, threshold) on
    ``bstar_probe_questions`` train questions, k samples each (the same questions and seed
    for every temperature; every threshold, None first, scored on the same samples)."""
    star, train = self.star, self.question_pool(n)
    rng = np.random.default_rng([self.config.seed, n, 29])
    m = min(star.bstar_probe_questions, len(train))
    questions = [train[i] for i in np.sort(rng.choice(len(train), m, replace=False))]
    few_shot = star.few_shot if n == 1 else star.few_shot_in_training
    thresholds = (None,) + tuple(float(x) for x in star.bstar_thresholds)
    scores = {}
    for i, t in enumerate(star.bstar_temperatures):
      self._temperature = float(t)
      gens, _ = self.sample(n, model, questions, hint=False, phase=f"probe_{i}",
                            few_shot=few_shot, seed=self.config.seed * 1000 + n + 700)
      for x in thresholds:
        scores[(float(t), x)] = keep_lib.balance_score(self.task, gens, star.bstar_n0,
                                                       star.require_supported, x)
    self._temperature = None
    return scores


def _label(temperature: float, threshold: float | None) -> str:
  """A candidate's key in the metrics: "0.7", or "0.7@-0.1" with a threshold."""
  return str(temperature) if threshold is None else f"{temperature}@{threshold}"


METHODS: dict[str, type[Method]] = {m.name: m for m in (Star, Direct, SeedOnly, RestEM, RFT,
                                                         BStar, GRPO, GRPOHint, ReinforceRej,
                                                         Trice, Mcts)}


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
