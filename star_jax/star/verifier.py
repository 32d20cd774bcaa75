"""V-STaR (Hosseini et al. 2024, arXiv 2402.06457): the wrong samples STaR throws away train
a verifier, and the verifier picks the best of k samples at test time.

  D_VER      every iteration's generated samples (never the hinted rationalizations: no
             hint text enters), right and wrong per question, ``iter_NNN/samples.jsonl``;
             a verifier reads every iteration's up to its own (``load_samples``)
  pairs      per question up to ``verifier.pairs_per_question`` (right, wrong) pairs of
             distinct texts; the questions of ``verifier.heldout_share`` are held out and
             give the verifier's pairwise accuracy (``make_pairs``)
  verifier   the generator's decoder initialised from M_0 (``verifier.init=base``: the
             paper's SFT model) or M_n (``generator``), trained with DPO (``losses.DPO``,
             the sigmoid loss) against that frozen start, on the sharded trainer
  score      beta x (log pi_v(y | x) - log pi_ref(y | x)) summed over the completion's tokens
  best-of-k  of a question's k sampled answers, the answered one the verifier scores highest;
             ties go to the first in sample order, and a question none of whose samples
             gives an answer counts as wrong: as for majority vote (``rollout.majority_vote``)

A verifier is trained after the last iteration (``verifier.every_iteration``: after every
one), saved in ``verifier/`` by iteration, and its numbers join that iteration's line in
metrics.jsonl (``verifier_*``, ``eval_verifier_best_of_*``). Its DPO steps checkpoint in
``verifier_train_N`` and step s's pairs are a function of (seed, n, s): a killed run resumes
to the same verifier. ``python -m star_jax.verify`` trains or reloads one for a finished run.
Best-of-k from the scores: ``best_of_k.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from typing import Sequence

import numpy as np
from etils import epath

from star_jax.config import Config
from star_jax.engine import params as params_lib, sharding
from star_jax.engine.losses import DPO
from star_jax.engine.trainer import Trainer
from star_jax.experiment import workdir as wd
from star_jax.experiment.workdir import Shards
from star_jax.hub.checkpointer import Checkpointer
from star_jax.runtime.errors import ConfigError, DataError
from star_jax.runtime.files import read_jsonl, write_jsonl
from star_jax.star import finetune as ft, keep as keep_lib, policy, rollout
from star_jax.star.train_loop import TrainLoop
from star_jax.tasks import Example, Task
from star_jax.tokenizer import Tokenizer

SAMPLES = "samples.jsonl"  # an iteration's generated samples, right and wrong (D_VER)
DIRECTORY = "verifier"  # the trained verifiers, by iteration


class NoPairsError(DataError):
  """The samples gave the verifier no pair to train on (``loop`` keeps the iterations).
  ``why``: "mixed" (no question with a right and a wrong sample), "held_out" or "too_long"."""

  def __init__(self, message: str, why: str = "mixed"):
    super().__init__(message)
    self.why = why


def check(config: Config, method=None) -> None:
  """Refuses verifier settings that cannot train, before anything is written; with the run's
  ``method`` class, a run whose samples can never give a question a right and a wrong text."""
  v = config.verifier
  if not v.enabled:
    return
  if v.beta <= 0 or v.learning_rate <= 0 or v.epochs <= 0:
    raise ConfigError(f"verifier.beta, verifier.learning_rate and verifier.epochs must be > 0, "
                      f"got {v.beta}, {v.learning_rate}, {v.epochs}")
  if v.pairs_per_question < 0 or v.batch_pairs < 1 or v.max_steps < 0:
    raise ConfigError("verifier.pairs_per_question and verifier.max_steps must be >= 0 and "
                      "verifier.batch_pairs >= 1")
  if not 0 <= v.heldout_share < 1:
    raise ConfigError(f"verifier.heldout_share must be in [0, 1), got {v.heldout_share}")
  texts = method.verifier_texts(config) if method is not None else 2
  if texts == 0:
    raise ConfigError(f"verifier.enabled trains on the right and wrong samples an iteration "
                      f"records, and star.method={config.star.method} records none: set "
                      f"star.method to star, rest_em, rft or bstar, or verifier.enabled=False")
  if texts == 1:  # pairs only where one answer changed between iterations: none in practice
    raise ConfigError(f"verifier.enabled trains on questions with a right and a wrong sample, "
                      f"but {method.sampling_keys(config)} gives one text a question: set "
                      f"{method.several_texts(config)}, or verifier.enabled=False")


def due(config: Config, n: int) -> bool:
  """Whether a verifier is trained after iteration ``n``."""
  v = config.verifier
  return v.enabled and n > 0 and (v.every_iteration or n == config.star.iterations)


# -- D_VER: the samples, and the pairs drawn from them ------------------------------------------
def record_samples(workdir: epath.PathLike, n: int, task: Task,
                   gens: Sequence[rollout.Generation], require_supported: bool) -> None:
  """Iteration ``n``'s generated samples, the distinct right and wrong texts per question (right:
  the reward STaR keeps by, ``keep.rewards``)."""
  rows = []
  for g in gens:
    rewards = keep_lib.rewards(task, g, require_supported)
    rows.append({"id": g.example.id,
                 "right": _distinct(t for t, r in zip(g.texts, rewards) if r > 0),
                 "wrong": _distinct(t for t, r in zip(g.texts, rewards) if r <= 0)})
  write_jsonl(wd.iteration_dir(workdir, n, SAMPLES), rows)


def _distinct(texts) -> list[str]:
  return list(dict.fromkeys(t for t in texts if t.strip()))


def load_samples(workdir: epath.PathLike, upto: int) -> dict[str, tuple[list[str], list[str]]]:
  """Question id -> (right texts, wrong texts), distinct, from iterations 1..``upto``."""
  out: dict[str, tuple[list[str], list[str]]] = {}
  for n in range(1, upto + 1):
    for row in read_jsonl(wd.iteration_dir(workdir, n, SAMPLES)):
      right, wrong = out.setdefault(row["id"], ([], []))
      right += [t for t in row["right"] if t not in right]
      wrong += [t for t in row["wrong"] if t not in wrong]
  return out


@dataclasses.dataclass(frozen=True)
class Pair:
  question: str  # the example's id
  chosen: str  # a right sample
  rejected: str  # a wrong one


def make_pairs(samples: dict[str, tuple[list[str], list[str]]], per_question: int,
               heldout_share: float, seed: int) -> tuple[list[Pair], list[Pair]]:
  """(training pairs, held-out pairs): every question with a right and a wrong sample gives
  up to ``per_question`` of its (right, wrong) combinations (0: all), drawn at random; the
  questions of a ``heldout_share`` are held out whole."""
  rng = np.random.default_rng([seed, 71])
  ids = [q for q, (right, wrong) in samples.items() if right and wrong]
  held = set(rng.permutation(ids)[:round(heldout_share * len(ids))].tolist()) if ids else set()
  train, heldout = [], []
  for q in ids:
    right, wrong = samples[q]
    combos = [(c, r) for c in right for r in wrong]
    if per_question and len(combos) > per_question:
      combos = [combos[i] for i in np.sort(rng.choice(len(combos), per_question, replace=False))]
    (heldout if q in held else train).extend(Pair(q, c, r) for c, r in combos)
  return train, heldout


# -- the verifier ----------------------------------------------------------------------------
@dataclasses.dataclass
class Verifier:
  """A trained verifier: scores a sampled completion by beta x log pi_v / pi_ref."""
  params: object  # pi_v, in the model's dtypes
  ref: object  # pi_ref (the frozen start), in the model's dtypes
  beta: float
  trainer: Trainer  # what computes the log-probabilities (its graph and mesh)
  rows: int  # rows a scoring micro-batch holds
  max_len: int
  fields: dict = dataclasses.field(default_factory=dict)  # its verifier_* metrics

  def score(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
            ) -> np.ndarray:
    """Each (prompt, completion)'s score; -inf for an empty completion or one too long. A
    text sampled more than once (a confident model's k samples often agree) is scored once."""
    out = np.full(len(prompts), -np.inf)
    first: dict[tuple, int] = {}  # each distinct (prompt, completion): its first index
    same = [first.setdefault((tuple(p), tuple(c)), i)
            for i, (p, c) in enumerate(zip(prompts, completions))]
    ok = [i for i, (p, c) in enumerate(zip(prompts, completions))
          if same[i] == i and c and len(p) + len(c) - 1 <= self.max_len]
    chunk = self.rows * 8
    for start in range(0, len(ok), chunk):
      idx = ok[start:start + chunk]
      batch = policy.policy_batch([prompts[i] for i in idx], [completions[i] for i in idx],
                                  [0.0] * len(idx), rows=self.rows, max_len=self.max_len)
      mask = batch["loss_mask"]
      lp_v = np.asarray(self.trainer.logprobs(self.params, batch, 1.0))
      lp_ref = np.asarray(self.trainer.logprobs(self.ref, batch, 1.0))
      scores = (self.beta * np.sum((lp_v - lp_ref) * mask, axis=-1)).reshape(-1)
      out[idx] = scores[:len(idx)]
    return out[same]


def encode(task: Task, tokenizer: Tokenizer, example: Example, texts: Sequence[str],
           few_shot: bool) -> tuple[list[int], list[list[int]]]:
  """The verifier's input: the question's prompt (never the hint) and each sampled text."""
  prompt = tokenizer.encode_prompt(task.prompt(example, hint=False, few_shot=few_shot))
  return prompt, [tokenizer.encode(t) for t in texts]


def train(config: Config, exp, n: int, start, pairs: list[Pair], heldout: list[Pair],
          few_shot: bool, ckpt_dir: epath.PathLike | None, desc: str = "verifier"
          ) -> Verifier:
  """A verifier trained from ``start`` with DPO on ``pairs`` (``Verifier.fields`` has its
  numbers, the held-out pairwise accuracy among them). Resumes from ``ckpt_dir``."""
  v, train_cfg = config.verifier, config.train
  if not pairs:
    raise NoPairsError(f"no verifier after iteration {n}: no training pairs")
  by_id = {ex.id: ex for ex in exp.train_set}
  max_len = exp.model_cfg.max_seq_len
  t0 = time.time()
  steps = math.ceil(v.epochs * len(pairs) / v.batch_pairs)
  steps = min(steps, v.max_steps) if v.max_steps else steps
  optim = ft.optim_config(dataclasses.replace(
      train_cfg, learning_rate=v.learning_rate,
      warmup_steps=min(train_cfg.warmup_steps, steps // 10)), steps)
  trainer = Trainer(exp.graphdef, exp.mesh, optim, master_dtype=train_cfg.master_dtype,
                    rounding=exp.rounding, rounding_seed=exp.rounding_seed, loss=DPO(v.beta))
  rows = _pair_rows(config, exp.mesh)
  if rows % 2:
    raise ConfigError(f"the mesh's batch shards make DPO micro-batches of {rows} rows; pairs "
                      "need an even number: change verifier.batch_pairs")
  ref = exp.sampling_copy(start)
  verifier = Verifier(None, ref, v.beta, trainer, rows, max_len)
  encoded = _encode_pairs(exp, by_id, pairs, few_shot, max_len)
  if not encoded:
    raise NoPairsError(f"no verifier after iteration {n}: every training pair is longer than "
                       f"the model's {max_len} tokens", "too_long")
  state = trainer.init(start, copy=True)
  logging.info("iteration %d: training a verifier (DPO, beta %g) from %s on %d pairs of %d "
               "questions, %d steps of %d pairs", n, v.beta, v.init, len(encoded),
               len({p.question for p in pairs}), steps, v.batch_pairs)

  def step(state, s):
    chosen = [encoded[i] for i in _step_pairs(config.seed, n, s, v.batch_pairs, len(encoded))]
    prompts = [p for p, _, _ in chosen for _ in range(2)]
    completions = [c for _, pair_c, pair_r in chosen for c in (pair_c, pair_r)]
    batch = policy.policy_batch(prompts, completions, [0.0] * len(prompts), rows=rows,
                                max_len=max_len)
    del batch["advantages"]
    batch["ref_logprobs"] = trainer.logprobs(ref, batch, 1.0)
    return trainer.step(state, batch)

  with TrainLoop(f"iter {n} {desc}", steps, ckpt_dir, checkpoint_every=config.checkpoint_every,
                 async_save=config.checkpoint_async, step_key="verifier_step",
                 step_failpoint="verifier_step",
                 postfix=lambda m: {"loss": f"{m['loss']:.3f}",
                                    "acc": f"{m['accuracy']:.2f}"}) as loop:
    state = loop.resume(state)
    state = loop.run(state, step)
  history = loop.records[-max(1, steps // 10):]
  # Scores come from the weights DPO's loss computed with (nearest-rounded masters), not the
  # stochastically rounded copy: the scored verifier is the trained one.
  verifier.params = trainer.forward_params(state)
  mean = lambda k: float(np.mean([h[k] for h in history])) if history else None
  verifier.fields = {
      "verifier_iteration": n, "verifier_init": v.init, "verifier_beta": v.beta,
      "verifier_pairs": len(encoded), "verifier_questions": len({p.question for p in pairs}),
      "verifier_steps": steps, "verifier_train_loss": mean("loss"),
      "verifier_train_accuracy": mean("accuracy"),
      **pairwise_accuracy(verifier, exp, by_id, heldout, few_shot),
      "verifier_seconds": time.time() - t0}
  return verifier


def _encode_pairs(exp, by_id: dict[str, Example], pairs: Sequence[Pair], few_shot: bool,
                  max_len: int) -> list[tuple[list[int], list[int], list[int]]]:
  """(prompt, chosen, rejected) token ids of the pairs that fit the model's context."""
  out, prompts = [], {}
  for p in pairs:
    if p.question not in prompts:
      prompts[p.question] = encode(exp.task, exp.tokenizer, by_id[p.question], [], few_shot)[0]
    prompt = prompts[p.question]
    chosen, rejected = (exp.tokenizer.encode(t) for t in (p.chosen, p.rejected))
    if chosen and rejected and len(prompt) + max(len(chosen), len(rejected)) - 1 <= max_len:
      out.append((prompt, chosen, rejected))
  return out


def _step_pairs(seed: int, n: int, s: int, per_step: int, total: int) -> list[int]:
  """Step ``s``'s pairs: epochs over a fresh permutation each, a function of (seed, n, s)."""
  orders: dict[int, np.ndarray] = {}  # one permutation an epoch, drawn once
  out = []
  for g in range((s - 1) * per_step, s * per_step):
    epoch, i = divmod(g, total)
    if epoch not in orders:
      orders[epoch] = np.random.default_rng([seed, n, epoch, 73]).permutation(total)
    out.append(int(orders[epoch][i]))
  return out


def pairwise_accuracy(verifier: Verifier, exp, by_id: dict[str, Example], pairs: Sequence[Pair],
                      few_shot: bool) -> dict:
  """The share of ``pairs`` whose right sample the verifier scores above the wrong one."""
  encoded = _encode_pairs(exp, by_id, pairs, few_shot, verifier.max_len)
  if not encoded:
    return {"verifier_heldout_pairs": 0, "verifier_pairwise_accuracy": None}
  prompts = [p for p, _, _ in encoded]
  chosen = verifier.score(prompts, [c for _, c, _ in encoded])
  rejected = verifier.score(prompts, [r for _, _, r in encoded])
  return {"verifier_heldout_pairs": len(encoded),
          "verifier_pairwise_accuracy": float(np.mean(chosen > rejected))}


def train_after(config: Config, exp, workdir: epath.PathLike, n: int, base, model,
                few_shot: bool, directory: epath.PathLike | None = None,
                retrain: bool = False) -> Verifier:
  """Iteration ``n``'s verifier, trained on iterations 1..n's samples and saved in
  ``directory`` (default ``workdir/verifier``), or restored from there when saved before
  (unless ``retrain``)."""
  v = config.verifier
  start = base if v.init == "base" else model
  directory = epath.Path(directory or epath.Path(workdir) / DIRECTORY)
  saved = Checkpointer(directory, max_to_keep=None)
  try:
    if n in saved.all_steps() and not retrain:
      logging.info("iteration %d: the verifier saved in %s", n, directory)
      return _restored(config, exp, saved, n, start)
    samples = load_samples(workdir, n)
    pairs, heldout = make_pairs(samples, v.pairs_per_question, v.heldout_share, config.seed)
    if not pairs:
      raise NoPairsError(no_pairs(samples, heldout, n, v.heldout_share),
                         "held_out" if heldout else "mixed")
    # The DPO train state, while it trains (a killed run resumes from it), beside the saved
    # verifiers (orbax reads every numbered directory in theirs as a step).
    steps_dir = directory.parent / f"{directory.name}_train_{n}"
    verifier = train(config, exp, n, start, pairs, heldout, few_shot, steps_dir)
    if n in saved.all_steps():  # retrained
      saved.delete(n)
    saved.save_params(n, verifier.params, meta=verifier.fields)
    saved.wait()
  finally:
    saved.close()
  Shards(steps_dir).remove()  # it has served
  return verifier


def no_pairs(samples: dict[str, tuple[list[str], list[str]]], heldout: list[Pair], n: int,
             heldout_share: float) -> str:
  """Why iterations 1..``n``'s ``samples`` gave no training pair, in one line."""
  if heldout:
    return (f"no verifier after iteration {n}: verifier.heldout_share={heldout_share:g} holds "
            f"out all {len({p.question for p in heldout})} questions with a right and a wrong "
            f"sample")
  right = sum(bool(r) and not w for r, w in samples.values())
  wrong = sum(bool(w) and not r for r, w in samples.values())
  span = "iteration 1" if n == 1 else f"iterations 1..{n}"
  return (f"no verifier after iteration {n}: no question of {span} has both a right and a "
          f"wrong sample ({right} all right, {wrong} all wrong)")


def _pair_rows(config: Config, mesh) -> int:
  """Rows a DPO micro-batch holds: at most the run's ``train.batch_size`` (whole pairs), so a
  step's 2 x ``verifier.batch_pairs`` rows accumulate over as many as they need."""
  rows = min(2 * config.verifier.batch_pairs, 2 * max(1, config.train.batch_size // 2))
  rows, _ = ft.micro_batching(rows, 1, sharding.batch_divisor(mesh))
  return rows


def _restored(config: Config, exp, saved: Checkpointer, n: int, start) -> Verifier:
  v = config.verifier
  trainer = Trainer(exp.graphdef, exp.mesh, ft.optim_config(config.train, 1), loss=DPO(v.beta))
  rows = _pair_rows(config, exp.mesh)
  params = saved.restore_params(params_lib.abstract_like(exp.params), n)
  return Verifier(params, exp.sampling_copy(start), v.beta, trainer, rows,
                  exp.model_cfg.max_seq_len, fields=saved.meta(n))


def score_generations(verifier: Verifier, task: Task, tokenizer: Tokenizer,
                      gens: Sequence[rollout.Generation], few_shot: bool) -> dict[str, np.ndarray]:
  """Question id -> the verifier's score of each of its samples."""
  prompts, completions, owners = [], [], []
  for g in gens:
    prompt, ids = encode(task, tokenizer, g.example, g.texts, few_shot)
    prompts += [prompt] * len(ids)
    completions += ids
    owners += [g.example.id] * len(ids)
  flat = verifier.score(prompts, completions)
  out: dict[str, list[float]] = collections.defaultdict(list)
  for q, s in zip(owners, flat):
    out[q].append(float(s))
  return {q: np.asarray(s) for q, s in out.items()}
