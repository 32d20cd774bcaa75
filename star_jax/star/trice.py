"""TRICE (Phan et al. 2023, arXiv 2312.02179): the rationale as a latent variable, trained by
MCMC-EM, on STaR's loop, sampler, trainer and budget (``star.method=trice``).

Each train question has one remembered rationale z_mem (its training text: rationale and
answer), first drawn with the answer as a hint the first time a step draws the question
(STaR's rationalization prompt, one sample; kept only when right and, with
``star.require_supported``, supported; saved without the hint). Drawn lazily, the hinted
init costs what the questions actually asked cost (its tokens count in ``tokens_sampled``),
not a pass over the whole train set. A policy step
draws one proposal z' per question from the current model without the hint. The proposal
replaces the memory when it is right (a_i = 1): an independence sampler whose target is the
posterior p(z | x, y), since for a 0/1 likelihood the Metropolis-Hastings acceptance of a
proposal from p(z | x) is the indicator that it is right. The step's gradient, for each
question with a memory,

    g_i = (1 - c_i a_i) grad log p(z_mem) - c_i (1 - a_i) grad log p(z')

is grad log p(z_mem) - c_i grad log p(z'): the memory's likelihood gradient less a control
variate whose expectation under the model is zero. c_i is the leave-one-out mean acceptance
of the step's other questions (``rl.trice_control_variate``; False: c = 0, which is STaR's
supervised step on the memories). Wrong proposals get negative weight, and the variance falls
as the acceptance rises.

The weights are advantages of ``losses.PolicyGradient`` at mu = 1 (ratio 1: the gradient is
-sum_t w grad log p_t), normalised by the step's completion tokens as STaR's cross-entropy is,
scored at temperature 1 (the model's own likelihood; the proposals are sampled at
``star.temperature``, 1 for the MCMC to target the posterior). The step loop, checkpoints and
resume are GRPO's (``grpo.py``); the memory is saved with every train-state checkpoint
(``iter_NNN/trice_memory/<step>.json``), and at the block's end as ``iter_NNN/trice_memory.json``
(``memory``: question id -> training text; ``hinted``: the questions given their hinted try,
once each), which the next block starts from.
"""

from __future__ import annotations

import collections
import json
import time

import numpy as np

from star_jax.engine.losses import PolicyGradient
from star_jax.experiment import workdir as wd
from star_jax.runtime.errors import ConfigError
from star_jax.runtime.files import write_atomic
from star_jax.star import keep as keep_lib, rollout
from star_jax.star.grpo import GRPO
from star_jax.star.iteration import IterationResult

MEMORY_DIR = "trice_memory"  # the memory at each train-state checkpoint (removed at the end)
FINAL_MEMORY = "trice_memory.json"  # the block's last memory: question id -> training text


def trice_weights(accepted: np.ndarray, has_memory: np.ndarray, control_variate: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(memory row weights, proposal row weights, c) of one step's questions.

  ``accepted``: whether each question's proposal was right (it is then the memory);
  ``has_memory``: whether the question has a memory after the step's replacements (a question
  with none trains on nothing). c_i is the mean acceptance of the step's other questions
  (0 with one question, or without ``control_variate``). A question's memory row weighs
  1 - c_i a_i, its proposal row -c_i (1 - a_i) (an accepted proposal is the memory row)."""
  a = np.asarray(accepted, np.float64)
  mem = np.asarray(has_memory, bool)
  Q = len(a)
  if control_variate and Q > 1:
    c = (a.sum() - a) / (Q - 1)
  else:
    c = np.zeros(Q)
  w_mem = np.where(mem, 1.0 - c * a, 0.0)
  w_prop = np.where(mem, -c * (1.0 - a), 0.0)
  return w_mem.astype(np.float32), w_prop.astype(np.float32), c.astype(np.float32)


class Trice(GRPO):
  name = "trice"

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    rl, train = self.config.rl, self.config.train
    self.group, self.kind, self.drop, self.hint = 1, "trice", False, False
    self.questions_per_step = rl.questions_per_step or max(
        1, train.batch_size * train.grad_accum // 2)
    # the model's likelihood (T = 1), a token mean over the step's rows, ratio 1 (mu = 1)
    self.loss = PolicyGradient(temperature=1.0, normalize="token", kl_beta=rl.kl_beta,
                               max_completion=self.task.max_new_tokens,
                               jitter=train.jitter_positions,
                               ref_logprobs=rl.kl_beta > 0 or rl.log_kl)
    self.memory: dict[str, str] = {}  # question id -> its remembered training text
    self.hinted: set[str] = set()  # the questions given their hinted try (once each)

  @classmethod
  def check(cls, config) -> None:
    super(GRPO, cls).check(config)  # the shared keys (Method's); GRPO's group rules do not apply
    star, rl = config.star, config.rl
    if star.temperature <= 0:
      raise ConfigError(f"star.method=trice samples proposals at star.temperature > 0 (1.0: "
                        f"the model's own distribution, the MCMC's), got {star.temperature}")
    if rl.inner_updates != 1:
      raise ConfigError(f"star.method=trice takes one update a step (rl.inner_updates=1), got "
                        f"{rl.inner_updates}")
    if rl.questions_per_step < 0 or rl.kl_beta < 0:
      raise ConfigError("rl.questions_per_step and rl.kl_beta must be >= 0")

  def describe_block(self, steps: int) -> str:
    return (f"trice, {steps} steps of {self.questions_per_step} questions, one proposal each "
            f"at temperature {self.star.temperature:g} (a hinted try the first time a question "
            f"is drawn); {len(self.memory)} rationales in memory; control variate "
            f"{'on' if self.config.rl.trice_control_variate else 'off'}")

  # -- the memory ---------------------------------------------------------------------------
  def begin_block(self, n: int, model, pool, start: int) -> None:
    """The memory at the block's start: the checkpoint's (resumed), else the last block's
    (none at n = 1: each question gets its hinted try the first time a step draws it)."""
    if start:
      saved = wd.iteration_dir(self.workdir, n, MEMORY_DIR, f"{start}.json")
      if not saved.exists():
        raise FileNotFoundError(f"{saved}: the TRICE memory of the checkpoint at step {start} "
                                "is missing; delete the iteration's train_ckpt to redo it")
    else:
      saved = wd.iteration_dir(self.workdir, n - 1, FINAL_MEMORY) if n > 1 else None
    if saved is not None and saved.exists():
      loaded = json.loads(saved.read_text())
      self.memory, self.hinted = loaded["memory"], set(loaded["hinted"])
    else:
      self.memory, self.hinted = {}, set()

  def save_block_state(self, n: int, s: int) -> None:
    folder = wd.iteration_dir(self.workdir, n, MEMORY_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{s}.json", json.dumps({"step": s, "memory": self.memory,
                                                   "hinted": sorted(self.hinted)}))
    for old in sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())[:-2]:
      (folder / f"{old}.json").unlink()  # the newest two: the checkpoint's, and the one before

  # -- a step -------------------------------------------------------------------------------
  def policy_step(self, n: int, s: int, trainer, state, pool, ref):
    """Step ``s``: one proposal per question, the memory updated, the weighted update."""
    star, task, tok = self.star, self.task, self.tokenizer
    t0 = time.time()
    rng = np.random.default_rng([self.config.seed, n, s, 37])
    Q = self.questions_per_step
    questions, prompts, params, out = self.ask(rng, trainer, state, pool)  # one proposal each
    proposals = [out.sequences(i, 0) for i in range(len(prompts))]
    # A question drawn for the first time: its memory is first drawn with the hint, once.
    fresh = list({ex.id: i for i, ex in reversed(list(enumerate(questions)))
                  if ex.id not in self.hinted and ex.id not in self.memory}.values())
    texts, init = self.hinted_samples(params, questions, sorted(fresh),
                                      int(rng.integers(2 ** 31)), samples=1)
    self.hinted |= {questions[i].id for i in fresh}
    for i, (text,) in texts.items():
      self.memory[questions[i].id] = text
    accepted = np.zeros(len(prompts), bool)
    by_difficulty = collections.defaultdict(lambda: [0.0, 0])
    for i, ex in enumerate(questions):
      text = tok.decode(proposals[i])
      accepted[i] = keep_lib.rewards(task, rollout.Generation.of(task, ex, [text]),
                                     star.require_supported)[0] > 0
      if accepted[i]:  # the MCMC step: a right proposal replaces the memory
        self.memory[ex.id] = task.completion(task.split_rationale(text), ex)
      d = task.difficulty(ex)
      if d is not None:
        by_difficulty[str(d)][0] += float(accepted[i])
        by_difficulty[str(d)][1] += 1
    sample_seconds = time.time() - t0

    t0 = time.time()
    has_memory = np.array([ex.id in self.memory for ex in questions], bool)
    w_mem, w_prop, c = trice_weights(accepted, has_memory, self.config.rl.trice_control_variate)
    rows = []
    for i, ex in enumerate(questions):
      if has_memory[i]:
        rows.append((prompts[i], tok.encode(self.memory[ex.id]), float(w_mem[i])))
      if w_prop[i] != 0:
        rows.append((prompts[i], proposals[i], float(w_prop[i])))
    room = self.sampler.cfg.max_seq_len + 1
    rows = [r for r in rows if r[1] and len(r[0]) + len(r[1]) <= room]
    state, metrics, slots = self.train_rows(trainer, state, rows, ref)
    ids = {ex.id for ex in pool}
    lengths = [len(p) for p in proposals]
    record = {"step": s, "reward_mean": float(accepted.mean()) if len(prompts) else 0.0,
              "control_variate": float(c.mean()) if len(c) else 0.0,
              "memory_share": sum(1 for k in self.memory if k in ids) / max(len(ids), 1),
              "questions": len(prompts), "prompts_skipped_too_long": Q - len(prompts),
              "trained_rows": len(rows), "token_slots": slots,
              "rows_with_advantage": sum(1 for _, _, w in rows if w != 0.0),
              "negative_rows": sum(1 for _, _, w in rows if w < 0.0),
              "tokens_sampled": int(sum(lengths)) + init["hint_tokens_sampled"],
              "init_asked": init["hint_groups"], "init_kept": init["hint_joined"],
              "init_tokens_sampled": init["hint_tokens_sampled"],
              "completion_length": float(np.mean(lengths)) if lengths else 0.0,
              "reward_by_difficulty": dict(sorted(by_difficulty.items())),
              "sample_seconds": sample_seconds, "train_seconds": time.time() - t0, **metrics}
    return state, record

  def _result(self, n: int, params, records: list[dict]) -> IterationResult:
    """GRPO's block summary (``rl_reward_*``: the proposals' acceptance) and TRICE's own."""
    write_atomic(wd.iteration_dir(self.workdir, n, FINAL_MEMORY),
                 json.dumps({"memory": self.memory, "hinted": sorted(self.hinted)},
                            sort_keys=True))
    result = super()._result(n, params, records)
    mean = lambda key: float(np.mean([r[key] for r in records])) if records else None
    total = lambda key: int(sum(r[key] for r in records))
    result.extra.update({
        "trice_acceptance": result.extra["rl_reward_mean"],
        "trice_memory_share": records[-1]["memory_share"] if records else None,
        "trice_control_variate": mean("control_variate"),
        "trice_negative_rows": total("negative_rows"),
        "trice_init_asked": total("init_asked"), "trice_init_kept": total("init_kept"),
        "trice_init_tokens_sampled": total("init_tokens_sampled")})
    return result
