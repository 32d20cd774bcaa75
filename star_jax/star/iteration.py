"""One STaR iteration, Algorithm 1 of the paper, step by step:

  questions  = a sample of D (or all of it)
  generated  = sample(M_{n-1}, questions)                 rationale + answer, no hint
  kept       = filter(generated)                          right answers whose rationale holds
  hinted     = rationalize(M_{n-1}, the failures)         the answer shown as a hint
  kept      += filter(hinted)                             saved without the hint
  M_n        = fine_tune(M_0 or M_{n-1}, kept)
  evaluate(M_n)                                           (the loop, after every method)

``Method`` holds what the steps share (the task, tokenizer, sampler, workdir) and the steps
every method uses (sampling, fine-tuning, evaluation); ``Star`` is the paper's iteration.
Other methods (in ``methods.py``: the controls; ReST-EM, RFT and B-STaR) are subclasses with
their own ``iteration``. Every step resumes from what a killed process left in the workdir.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
from etils import epath

from star_jax.config import Config
from star_jax.engine.batching import TrainExample
from star_jax.experiment import workdir as wd
from star_jax.experiment.board import Board
from star_jax.experiment.build import Experiment
from star_jax.runtime.errors import ConfigError
from star_jax.sampling import Sampler, SamplingParams
from star_jax.star import best_of_k, finetune as ft, keep as keep_lib, rollout
from star_jax.star import verifier as verifier_lib
from star_jax.tasks import Example


@dataclasses.dataclass
class IterationResult:
  """What one iteration did, for its metrics record (``record.py``) and artifacts."""
  method: str
  params: object  # M_n
  questions: list[Example]  # the questions this iteration asked (or trained on)
  kept: list[dict]  # kept rationales, as written to kept.jsonl
  generation: keep_lib.Kept | None = None  # what filtering the plain samples kept
  rationalization: keep_lib.Kept | None = None  # what filtering the hinted samples kept
  samples: list[rollout.Generation] = dataclasses.field(default_factory=list)
  samples_per_question: int = 1
  skipped: int = 0  # prompts too long for the context
  # None: nothing kept, not trained: M_n is the start (M_0 with restart_from_base, else M_{n-1})
  train: ft.FinetuneStats | None = None
  sample_seconds: float = 0.0
  rationalize_seconds: float = 0.0
  train_seconds: float = 0.0
  extra: dict = dataclasses.field(default_factory=dict)  # a method's own metrics (B-STaR's)


class Method:
  """The steps every method shares; subclasses define ``iteration``."""

  name = ""

  def __init__(self, config: Config, exp: Experiment, sampler: Sampler,
               workdir: epath.PathLike, board: Board | None = None):
    self.config, self.star = config, config.star
    self.exp, self.task, self.tokenizer = exp, exp.task, exp.tokenizer
    self.sampler = sampler
    self.workdir = epath.Path(workdir)
    self.board = board

  def iteration(self, n: int, base, model) -> IterationResult:
    """Iteration ``n`` from M_{n-1} = ``model`` (``base`` = M_0)."""
    raise NotImplementedError

  @classmethod
  def check(cls, config: Config) -> None:
    """Refuses (``ConfigError``) settings this method cannot run, before anything is built or
    written; here the sampling keys every method shares."""
    star, k = config.star, config.eval.samples
    if star.samples_per_question < 1 or star.temperature < 0 or star.top_k < 0:
      raise ConfigError(f"star.samples_per_question must be >= 1 and star.temperature and "
                        f"star.top_k >= 0, got {star.samples_per_question}, "
                        f"{star.temperature:g} and {star.top_k}")
    if not 0 < star.top_p <= 1:
      raise ConfigError(f"star.top_p must be in (0, 1], got {star.top_p:g}")
    if k < 0:
      raise ConfigError(f"eval.samples must be >= 0 (0 = greedy only), got {k}")
    if k and config.eval.temperature <= 0:
      raise ConfigError(f"eval.samples={k} at eval.temperature={config.eval.temperature:g} "
                        f"draws the greedy answer {k} times: set eval.temperature > 0 (0.5-0.7) "
                        f"or eval.samples=0")

  @classmethod
  def verifier_texts(cls, config: Config) -> int:
    """The most distinct texts of one question an iteration's samples can give the verifier
    (``iter_NNN/samples.jsonl``, V-STaR's D_VER); 0: the method records none."""
    return 0

  @property
  def restarts_from_base(self) -> bool:
    """Whether M_n is trained from M_0 (then M_{n-1} is held as the sampler's copy, not as
    masters a later fine-tune continues from)."""
    return self.star.restart_from_base

  def eval_few_shot(self, n: int) -> bool:
    """Whether M_n is evaluated with the few-shot exemplars: M_0 as prompted for sampling,
    a fine-tuned M_n in the format its texts were trained in."""
    return self.star.few_shot if n == 0 else self.star.few_shot_in_training

  # -- the shared steps ---------------------------------------------------------------------
  def sample(self, n: int, model, questions: list[Example], *, hint: bool, phase: str,
             few_shot: bool, seed: int) -> tuple[list[rollout.Generation], int]:
    """``star.samples_per_question`` completions per question, at the configured temperature."""
    return rollout.generate(self.task, self.tokenizer, self.sampler,
                            self.exp.sampling_copy(model), questions, hint=hint,
                            few_shot=few_shot, sampling=self.sampling(),
                            n=self.star.samples_per_question, seed=seed,
                            desc=f"iter {n} {phase}",
                            shard_dir=wd.iteration_dir(self.workdir, n, f"{phase}_shards"),
                            shard_size=self.config.sample.shard_size)

  def sampling(self, temperature: float | None = None) -> SamplingParams:
    """The configured sampling, at ``temperature`` if given (else ``star.temperature``)."""
    star = self.star
    return SamplingParams(star.temperature if temperature is None else temperature,
                          star.top_k, star.top_p)

  def question_pool(self, n: int) -> list[Example]:
    """The train set, or with a curriculum (``star.curriculum_start`` or ``curriculum``) its
    questions of difficulty up to ``star.curriculum_top(n)``: each iteration opens the next
    lengths, whose questions come with answers only (Lee et al. 2025)."""
    top = self.star.curriculum_top(n)
    if not top:
      return self.exp.train_set
    pool = [ex for ex in self.exp.train_set if (self.task.difficulty(ex) or 0) <= top]
    if not pool:
      which = (f"star.curriculum={tuple(self.star.curriculum)}" if self.star.curriculum
               else f"star.curriculum_start={self.star.curriculum_start}")
      raise ConfigError(f"{which}: no train question of difficulty <= {top} at iteration {n}")
    return pool

  def fine_tune(self, n: int, start, examples: list[TrainExample], desc: str
                ) -> tuple[object, ft.FinetuneStats]:
    """``start`` trained on ``examples`` for iteration ``n``'s steps (resumable)."""
    steps = ft.steps_for_iteration(self.star, n)
    logging.info("iteration %d: %s on %d examples for %d steps", n, desc, len(examples), steps)
    return ft.finetune(ft.make_trainer(self.exp, self.config.train, steps), start, examples,
                       self.config.train, steps, seed=self.config.seed * 1000 + n,
                       desc=f"iter {n} {desc}",
                       ckpt_dir=wd.iteration_dir(self.workdir, n, "train_ckpt"),
                       checkpoint_every=self.config.checkpoint_every,
                       async_save=self.config.checkpoint_async,
                       on_step=self.board.step_callback(self.workdir, n) if self.board else None,
                       keep_masters=not self.star.restart_from_base)

  def evaluate(self, n: int, model, few_shot: bool, verifier=None) -> rollout.EvalResult:
    """Greedy accuracy of ``model`` on the eval set (and the choices' log-likelihood); with
    ``eval.samples`` = k also pass@k and majority-vote accuracy of k samples
    (``rollout.sampled_eval``), and with a ``verifier`` (V-STaR) its best-of-k."""
    logging.info("iteration %d: evaluating on %d questions", n, len(self.exp.eval_set))
    t0 = time.time()
    params = self.exp.sampling_copy(model)
    result = rollout.evaluate(self.task, self.tokenizer, self.sampler, params,
                              self.exp.eval_set, few_shot=few_shot, seed=self.config.seed,
                              shard_dir=wd.iteration_dir(self.workdir, n, "eval_shards"),
                              shard_size=self.config.sample.shard_size)
    if self.config.eval.choice_loglik:
      result.choice_loglik = rollout.choice_loglik_accuracy(self.task, self.tokenizer,
                                                            self.sampler, params,
                                                            self.exp.eval_set)
    k = self.config.eval.samples
    if k > 0:
      temperature = self.config.eval.temperature
      gens, _ = rollout.generate(self.task, self.tokenizer, self.sampler, params,
                                 self.exp.eval_set, hint=False, few_shot=few_shot,
                                 sampling=SamplingParams(temperature), n=k,
                                 seed=self.config.seed * 1000 + 900 + n,
                                 desc=f"evaluate {k} samples",
                                 shard_dir=wd.iteration_dir(self.workdir, n, "eval_k_shards"),
                                 shard_size=self.config.sample.shard_size)
      result.sampled = rollout.sampled_eval(self.task, gens, self.exp.eval_set, k, temperature)
      if verifier is not None:
        scores = verifier_lib.score_generations(verifier, self.task, self.tokenizer, gens,
                                                few_shot)
        result.sampled.update(best_of_k.best_of_k_eval(self.task, gens, scores,
                                                       self.exp.eval_set, k))
    result.seconds = time.time() - t0
    return result


def balanced_pick(rng: np.random.Generator, levels: list, k: int) -> np.ndarray:
  """``k`` indices into ``levels``, as evenly over its distinct levels as they allow: a level
  with fewer than its share gives all it has, and the rest is shared by the others."""
  groups = {}
  for i, level in enumerate(levels):
    groups.setdefault(level, []).append(i)
  sizes = sorted(groups.items(), key=lambda kv: len(kv[1]))
  picked, left = [], k
  for j, (_, members) in enumerate(sizes):
    take = min(len(members), left // (len(sizes) - j))
    picked.extend(rng.choice(members, take, replace=False))
    left -= take
  return np.asarray(picked, dtype=int)


def greedy(temperatures, top_k: int) -> bool:
  """Whether sampling at every one of ``temperatures`` with ``top_k`` gives one text a prompt."""
  return top_k == 1 or all(t <= 0 for t in temperatures)


class Star(Method):
  """The paper's iteration (Algorithm 1)."""

  name = "star"
  distinct = "text"  # what makes two kept rationales of a question the same (keep.DISTINCT)
  temperature_key = "star.temperature"  # the key(s) its sampling temperature comes from

  @classmethod
  def temperatures(cls, config: Config) -> tuple:
    return (config.star.temperature,)

  @classmethod
  def check(cls, config: Config) -> None:
    super().check(config)
    k = config.star.samples_per_question
    if k > 1 and greedy(cls.temperatures(config), config.star.top_k):
      raise ConfigError(f"{cls.sampling_keys(config)} samples the same greedy text {k} times: "
                        f"set {cls.several_texts(config)}, or star.samples_per_question=1")

  @classmethod
  def verifier_texts(cls, config: Config) -> int:
    star = config.star
    return 1 if greedy(cls.temperatures(config), star.top_k) else star.samples_per_question

  @classmethod
  def sampling_keys(cls, config: Config) -> str:
    """The sampling keys as set: "star.samples_per_question=1 at star.temperature=0"."""
    star = config.star
    temperatures = ",".join(f"{t:g}" for t in cls.temperatures(config))
    return (f"star.samples_per_question={star.samples_per_question} at {cls.temperature_key}="
            f"{temperatures}{' with star.top_k=1' if star.top_k == 1 else ''}")

  @classmethod
  def several_texts(cls, config: Config) -> str:
    """The changes that give a question several distinct texts: "star.temperature > 0"."""
    star, changes = config.star, []
    if star.samples_per_question < 2:
      changes.append("star.samples_per_question >= 2 (e.g. 4)")
    if all(t <= 0 for t in cls.temperatures(config)):
      changes.append(f"{cls.temperature_key} > 0 (e.g. 0.7)")
    if star.top_k == 1:
      changes.append("star.top_k != 1")
    return " and ".join(changes)

  def iteration(self, n: int, base, model) -> IterationResult:
    star, seed = self.star, self.config.seed * 1000 + n
    rng = np.random.default_rng([self.config.seed, n])  # questions, then who is rationalized
    questions = self.choose_questions(rng, n)
    few_shot = star.few_shot if n == 1 else star.few_shot_in_training  # M_0 vs M_n's format
    logging.info("iteration %d: sampling rationales for %d questions", n, len(questions))

    t0 = time.time()
    samples, skipped = self.sample(n, model, questions, hint=False, phase="generate",
                                   few_shot=few_shot, seed=seed)
    generation = self.filter(samples, "generation")
    sample_seconds = time.time() - t0

    t0 = time.time()
    hinted, hinted_skipped = self.rationalize(n, model, generation.failed, rng, seed + 500)
    rationalization = self.filter(hinted, "rationalization")
    rationalize_seconds = time.time() - t0

    kept = generation.records + rationalization.records
    t0 = time.time()
    start = base if star.restart_from_base else model
    new_model, stats = self.fine_tune_on_kept(n, start, kept, questions)
    sampled = [rollout.tokens_sampled(samples), rollout.tokens_sampled(hinted)]
    return IterationResult(self.name, new_model, questions, kept, generation, rationalization,
                           samples, star.samples_per_question, skipped + hinted_skipped, stats,
                           sample_seconds, rationalize_seconds, time.time() - t0,
                           extra={"tokens_sampled": None if None in sampled else sum(sampled)})

  def choose_questions(self, rng: np.random.Generator, n: int = 1) -> list[Example]:
    """Iteration ``n``'s pool of train questions (``question_pool``), or a random
    ``star.questions_per_iteration`` of it (in order)."""
    questions, k = self.question_pool(n), self.star.questions_per_iteration
    if k and k < len(questions):
      pick = (balanced_pick(rng, [self.task.difficulty(ex) for ex in questions], k)
              if self.star.balanced_draw else rng.choice(len(questions), k, replace=False))
      questions = [questions[i] for i in np.sort(pick)]
    return questions

  def filter(self, samples: list[rollout.Generation], source: str) -> keep_lib.Kept:
    """The right answers whose rationale holds, at most ``max_kept_per_question`` each."""
    return keep_lib.keep(self.task, samples, source, self.star.max_kept_per_question,
                         self.star.require_supported, self.distinct, self.min_score(source))

  def min_score(self, source: str) -> float | None:
    """The lowest sample score (mean token log-probability) kept from ``source``; None: any."""
    return None

  def rationalize(self, n: int, model, failed: list[Example], rng: np.random.Generator,
                  seed: int) -> tuple[list[rollout.Generation], int]:
    """A hinted try for a ``p_rationalization`` share of the failures (none: no samples)."""
    if not (self.star.rationalize and failed):
      return [], 0
    chosen = [ex for ex in failed if rng.random() < self.star.p_rationalization]
    logging.info("iteration %d: rationalizing %d of %d failures", n, len(chosen), len(failed))
    return self.sample(n, model, chosen, hint=True, phase="rationalize",
                       few_shot=self.star.few_shot_rationalization, seed=seed)

  def fine_tune_on_kept(self, n: int, start, kept: list[dict], questions: list[Example]
                        ) -> tuple[object, ft.FinetuneStats | None]:
    """``start`` fine-tuned on the kept rationales (none kept: ``start`` unchanged)."""
    if not kept:
      logging.warning("iteration %d kept no rationales: training skipped, M_%d is the model "
                      "fine-tuning would start from (%s)", n, n,
                      "M_0" if self.star.restart_from_base else f"M_{n - 1}")
      return start, None
    by_id = {ex.id: ex for ex in questions}
    examples = ft.training_examples(self.task, self.tokenizer,
                                    [(by_id[k["id"]], k["rationale"]) for k in kept],
                                    few_shot=self.star.few_shot_in_training)
    return self.fine_tune(n, start, examples, "train")
