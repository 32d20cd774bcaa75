"""Policy-gradient methods on STaR's budget: GRPO and Reinforce-Rej (``star.method``).

RL-STaR reads STaR as policy improvement with a 0/1 reward; these are the policy-gradient
methods it is compared with, run by the same loop, sampler, trainer and evaluation:

  grpo           GRPO (DeepSeekMath, arXiv 2402.03300): each policy step samples G =
                 ``star.samples_per_question`` completions for each of ``rl.questions_per_step``
                 questions at ``star.temperature`` from the current parameters, rewards each by
                 the task's check, and takes ``rl.inner_updates`` steps of the clipped
                 surrogate (``losses.PolicyGradient``) with group-normalised advantages
                 (``rl.advantage=dr_grpo``: Dr. GRPO's, ``policy.py``)
  reinforce_rej  Reinforce-Rej (Xiong et al. 2025, arXiv 2504.11343): +-1 rewards as the
                 advantage, groups all right or all wrong dropped

An iteration is a block of ``steps_for_iteration(star, n)`` policy steps on one train state
(Adam's moments carry from step to step; each block starts them afresh, as STaR's
iterations do); the loop evaluates M_n after each block. The sampler and the trainer share
the parameters: every step samples from ``trainer.forward_params(state)``, the weights the
loss computes with (not the stochastically rounded copy a saved model gets), no second copy. Each
step's metrics go to ``iter_NNN/policy_steps.jsonl`` and TensorBoard; the block's summary
(``rl_*``) to metrics.jsonl. A killed block resumes from its last train-state checkpoint
(every ``checkpoint_every`` steps): step s's questions and samples are functions of (seed,
n, s), so the resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import collections
import logging
import time

import numpy as np

from star_jax.engine import sharding
from star_jax.engine.losses import PolicyGradient
from star_jax.engine.positions import draws_positions
from star_jax.engine.trainer import Trainer
from star_jax.experiment import workdir as wd
from star_jax.runtime.errors import ConfigError
from star_jax.runtime.files import read_jsonl, write_jsonl
from star_jax.star import finetune as ft, keep as keep_lib, policy, rollout
from star_jax.star.iteration import IterationResult, Method
from star_jax.star.train_loop import TrainLoop

STEP_LOG = "policy_steps.jsonl"


class GRPO(Method):
  name = "grpo"
  advantage: str | None = None  # None: rl.advantage
  drop_uniform: bool | None = None  # None: rl.drop_uniform_groups
  with_hint: bool | None = None  # None: rl.hint

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.check(self.config)
    star, rl, train = self.star, self.config.rl, self.config.train
    self.kind = self.advantage or rl.advantage
    self.drop = rl.drop_uniform_groups if self.drop_uniform is None else self.drop_uniform
    self.hint = rl.hint if self.with_hint is None else self.with_hint
    self.group = star.samples_per_question
    self.questions_per_step = (rl.questions_per_step
                               or train.batch_size * train.grad_accum // self.group)
    self.loss = PolicyGradient(
        temperature=star.temperature, clip_low=rl.clip_epsilon,
        clip_high=rl.clip_epsilon_high or rl.clip_epsilon, kl_beta=rl.kl_beta,
        normalize=policy.NORMALIZE[self.kind], max_completion=self.task.max_new_tokens,
        jitter=train.jitter_positions, old_logprobs=rl.inner_updates > 1,
        ref_logprobs=rl.kl_beta > 0 or rl.log_kl)
    if train.jitter_positions and draws_positions(self.exp.model_cfg):
      logging.warning("star.method=%s trains at jittered positions (train.jitter_positions) "
                      "but samples at the sampler's: off-policy in positions, measured to "
                      "drift and collapse; --config.train.jitter_positions=False "
                      "trains every method at the sampler's positions (docs/variants.md)",
                      self.name)

  @classmethod
  def check(cls, config) -> None:
    super().check(config)
    star, rl, train = config.star, config.rl, config.train
    group = star.samples_per_question
    if group < 2:
      raise ConfigError(f"star.method={cls.name} samples a group per question: "
                        f"star.samples_per_question must be >= 2, got {group}")
    if star.temperature <= 0 or star.top_k == 1:  # greedy: every group all right or all wrong
      raise ConfigError(f"star.method={cls.name} samples at star.temperature > 0 with "
                        f"star.top_k != 1, got {star.temperature:g} and {star.top_k}")
    if rl.hint_samples < 0:
      raise ConfigError(f"rl.hint_samples must be >= 0 (0 = star.samples_per_question), got "
                        f"{rl.hint_samples}")
    if rl.inner_updates < 1 or rl.questions_per_step < 0:
      raise ConfigError(f"rl.inner_updates must be >= 1 and rl.questions_per_step >= 0, got "
                        f"{rl.inner_updates} and {rl.questions_per_step}")
    if not 0 < rl.clip_epsilon < 1 or rl.clip_epsilon_high < 0 or rl.kl_beta < 0:
      raise ConfigError("rl.clip_epsilon must be in (0, 1); rl.clip_epsilon_high and "
                        "rl.kl_beta >= 0")
    rows = train.batch_size * train.grad_accum
    if rl.questions_per_step == 0 and rows % group:
      raise ConfigError(f"rl.questions_per_step=0 takes train.batch_size x train.grad_accum = "
                        f"{rows} rows a step as questions x star.samples_per_question, but "
                        f"{rows} is not a multiple of {group}: set rl.questions_per_step")

  @property
  def restarts_from_base(self) -> bool:
    return False  # a block continues the policy: M_n is trained from M_{n-1}

  def eval_few_shot(self, n: int) -> bool:
    return self.star.few_shot  # trained on the prompts it sampled with, from M_0 on

  def iteration(self, n: int, base, model) -> IterationResult:
    star, rl = self.star, self.config.rl
    steps = ft.steps_for_iteration(star, n)
    trainer = Trainer(self.exp.graphdef, self.exp.mesh,
                      ft.optim_config(self.config.train, steps * rl.inner_updates),
                      master_dtype=self.config.train.master_dtype, rounding=self.exp.rounding,
                      rounding_seed=self.exp.rounding_seed, loss=self.loss)
    state = trainer.init(model, copy=True)
    log_path = wd.iteration_dir(self.workdir, n, STEP_LOG)
    ref = self.exp.sampling_copy(base) if self.loss.ref_logprobs else None
    pool = self.question_pool(n)
    with TrainLoop(f"iter {n} {self.name}", steps, wd.iteration_dir(self.workdir, n, "train_ckpt"),
                   checkpoint_every=self.config.checkpoint_every,
                   async_save=self.config.checkpoint_async, step_key="policy_step",
                   postfix=lambda r: {"reward": f"{r['reward_mean']:.2f}"}) as loop:
      state = loop.resume(state)
      start = loop.start
      earlier = [r for r in read_jsonl(log_path) if r["step"] <= start]
      self.begin_block(n, model, pool, start)
      logging.info("iteration %d: %s", n, self.describe_block(steps))

      def on_save(s: int) -> None:
        # The step log goes with the checkpoint: a resumed block keeps the records up to its
        # checkpoint and redoes the rest.
        write_jsonl(log_path, earlier + loop.records)
        self.save_block_state(n, s)

      state = loop.run(state, lambda state, s: self.policy_step(n, s, trainer, state, pool, ref),
                       on_save=on_save,
                       on_step=self.board.step_callback(self.workdir, n) if self.board else None)
    records = earlier + loop.records
    return self._result(n, trainer.model_params(state, masters=True), records)

  # -- what a method of this loop may add: its own state beside the train state -------------
  def begin_block(self, n: int, model, pool, start: int) -> None:
    """Before iteration ``n``'s steps (``start`` > 0: resumed at that checkpoint's step)."""

  def save_block_state(self, n: int, s: int) -> None:
    """Written with the train-state checkpoint of step ``s``."""

  def describe_block(self, steps: int) -> str:
    return (f"{self.name}, {steps} policy steps of {self.questions_per_step} questions x "
            f"{self.group} samples at temperature {self.star.temperature:g} (advantage "
            f"{self.kind}{', uniform groups dropped' if self.drop else ''}"
            f"{', all-wrong groups retried with the hint' if self.hint else ''})")

  def policy_step(self, n: int, s: int, trainer: Trainer, state, pool, ref):
    """Step ``s`` of iteration ``n``: sample the groups, reward, update; (state, record)."""
    star, task, tok = self.star, self.task, self.tokenizer
    t0 = time.time()
    rng = np.random.default_rng([self.config.seed, n, s, 31])
    Q = self.questions_per_step
    questions, prompts, params, out = self.ask(rng, trainer, state, pool)
    completions = [[out.sequences(q, g) for g in range(self.group)] for q in range(len(prompts))]
    rewards_QxG = np.zeros((len(prompts), self.group), np.float32)
    by_difficulty = collections.defaultdict(lambda: [0.0, 0])
    for q, ex in enumerate(questions):
      gen = rollout.Generation.of(task, ex, [tok.decode(c) for c in completions[q]])
      rewards_QxG[q] = keep_lib.rewards(task, gen, star.require_supported)
      d = task.difficulty(ex)
      if d is not None:
        by_difficulty[str(d)][0] += float(rewards_QxG[q].sum())
        by_difficulty[str(d)][1] += self.group
    all_right, all_wrong = policy.uniform_groups(rewards_QxG)  # as sampled without the hint
    hinted, hint_record = ({}, {})
    if self.hint:  # all-wrong groups sampled again with the hint; the right ones join them
      texts, hint_record = self.hinted_samples(params, questions, np.flatnonzero(all_wrong),
                                               int(rng.integers(2 ** 31)),
                                               self.config.rl.hint_samples or self.group)
      hinted = {q: [tok.encode(t) for t in ts] for q, ts in texts.items()}
    sample_seconds = time.time() - t0

    t0 = time.time()
    group_rewards = [np.concatenate([rewards_QxG[q], np.ones(len(hinted.get(q, ())), np.float32)])
                     for q in range(len(prompts))]
    group_completions = [completions[q] + hinted.get(q, []) for q in range(len(prompts))]
    rows = [(prompts[q], group_completions[q][g], float(a))
            for q, adv in policy.group_advantages(group_rewards, self.kind, self.drop)
            for g, a in enumerate(adv)]
    state, metrics, slots = self.train_rows(trainer, state, rows, ref)
    lengths = [len(c) for cs in completions for c in cs]
    record = {"step": s, "reward_mean": float(rewards_QxG.mean()) if len(prompts) else 0.0,
              "all_right_share": float(all_right.mean()) if len(prompts) else 0.0,
              "all_wrong_share": float(all_wrong.mean()) if len(prompts) else 0.0,
              "questions": len(prompts), "prompts_skipped_too_long": Q - len(prompts),
              "trained_rows": len(rows), "token_slots": slots,
              "rows_with_advantage": sum(1 for _, _, a in rows if a != 0.0),
              "tokens_sampled": int(sum(lengths)) + hint_record.get("hint_tokens_sampled", 0),
              **hint_record,
              "completion_length": float(np.mean(lengths)) if lengths else 0.0,
              "reward_by_difficulty": dict(sorted(by_difficulty.items())),
              "sample_seconds": sample_seconds, "train_seconds": time.time() - t0, **metrics}
    return state, record

  def ask(self, rng: np.random.Generator, trainer: Trainer, state, pool):
    """A step's questions (``questions_per_step`` drawn from ``pool``; one too long for the
    context is not asked, the caller counts it) and their samples, ``self.group`` each:
    (questions, prompts, the sampled weights, the sampler's output)."""
    task, tok, Q = self.task, self.tokenizer, self.questions_per_step
    picked = rng.choice(len(pool), Q, replace=len(pool) < Q)
    questions, prompts = rollout.fitting_prompts(task, tok, self.sampler,
                                                 [pool[i] for i in picked], hint=False,
                                                 few_shot=self.star.few_shot)
    # Sampled from the weights the loss computes with (the masters cast to the nearest value),
    # so the sampling policy is the one the update's log-probs score.
    params = trainer.forward_params(state)
    out = self.sampler.sample(params, prompts, task.max_new_tokens, self.sampling(),
                              n=self.group, seed=int(rng.integers(2 ** 31)),
                              stop_strings=task.stop_strings, decode_fn=tok.decode)
    return questions, prompts, params, out

  def train_rows(self, trainer: Trainer, state, rows: list, ref):
    """The update on (prompt, completion, advantage) ``rows`` (none: no update); (state, the
    step's metrics, token slots computed, padding included)."""
    if not rows:
      return state, {}, 0
    batch = policy.policy_batch(*zip(*rows), rows=self._rows(trainer),
                                max_len=self.sampler.cfg.max_seq_len,
                                pack=self.config.rl.pack_rows,
                                divisor=sharding.batch_divisor(trainer.mesh))
    state, updates = self.update(trainer, state, batch, ref)
    # (a non-finite loss stops the block in TrainLoop, the checkpoints after it deleted)
    metrics = {k: float(np.mean([float(m[k]) for m in updates])) for k in updates[0]}
    return state, metrics, int(np.prod(batch["tokens"].shape))

  def hinted_samples(self, params, questions, which, seed: int, samples: int
                     ) -> tuple[dict[int, list[str]], dict]:
    """``samples`` samples of each of ``questions[which]`` with the answer as a hint (STaR's
    rationalization prompt, ``star.few_shot_rationalization``), from the same weights at the
    same temperature; ({question index: the training texts of its right ones}, the step's
    hint metrics). A hinted sample counts when it is right and, with
    ``star.require_supported``, its rationale reaches the answer; as STaR keeps a hinted
    rationale, its text is the task's training text of that rationale (no hint line:
    ``Task.split_rationale`` strips any the model copied), to follow the prompt without the
    hint. A question whose prompt, hinted or not, leaves no room is left as it is."""
    star, task, tok = self.star, self.task, self.tokenizer
    record = {"hint_groups": len(which), "hint_joined": 0, "hint_groups_opened": 0,
              "hint_tokens_sampled": 0}
    owners, exs, prompts = [], [], []
    for q in which:
      ex, prompt = rollout.fitting_prompts(task, tok, self.sampler, [questions[q]], hint=True,
                                           few_shot=star.few_shot_rationalization)
      owners += [int(q)] * len(ex)
      exs += ex
      prompts += prompt
    if not prompts:
      return {}, record
    out = self.sampler.sample(params, prompts, task.max_new_tokens, self.sampling(),
                              n=samples, seed=seed, stop_strings=task.stop_strings,
                              decode_fn=tok.decode)
    right: dict[int, list[str]] = {}
    for i, ex in enumerate(exs):
      ids = [out.sequences(i, h) for h in range(samples)]
      texts = [tok.decode(c) for c in ids]
      record["hint_tokens_sampled"] += sum(len(c) for c in ids)
      ok = keep_lib.rewards(task, rollout.Generation.of(task, ex, texts), star.require_supported)
      room = self.sampler.cfg.max_seq_len + 1 - len(tok.encode_prompt(
          task.prompt(ex, hint=False, few_shot=star.few_shot)))
      done = [c for c in (task.completion(task.split_rationale(t), ex)
                          for t, r in zip(texts, ok) if r > 0) if len(tok.encode(c)) <= room]
      if done:
        right[owners[i]] = done
    record["hint_joined"] = sum(len(c) for c in right.values())
    record["hint_groups_opened"] = len(right)
    return right, record

  def update(self, trainer: Trainer, state, batch: dict, ref) -> tuple[object, list[dict]]:
    """``rl.inner_updates`` steps on one sampled batch; (state, each step's metrics).

    The reference's and the sampling policy's log-probs are taken before the first update,
    each at the positions the update that reads them draws (a position scheme that jitters
    in training draws them from the step's key: ``Trainer.logprobs(..., step=)``), so the
    ratio compares one text at one set of positions.
    """
    mu, temperature = self.config.rl.inner_updates, self.loss.temperature
    # one set of positions per update when they are drawn, else the sampler's for all
    keyed = self.loss.jitter and draws_positions(self.exp.model_cfg)
    at = [int(state.step) + k for k in range(mu)] if keyed else [None]
    refs = olds = None
    if ref is not None:
      refs = [trainer.logprobs(ref, batch, temperature, step=s) for s in at]
    if self.loss.old_logprobs:
      sampling_policy = trainer.forward_params(state)
      olds = [trainer.logprobs(sampling_policy, batch, temperature, step=s) for s in at]
    updates = []
    for k in range(mu):
      if refs is not None:
        batch["ref_logprobs"] = refs[min(k, len(at) - 1)]
      if olds is not None:
        batch["old_logprobs"] = olds[min(k, len(at) - 1)]
      state, m = trainer.step(state, batch)
      updates.append(m)
    return state, updates

  def _rows(self, trainer: Trainer) -> int:
    """Rows a micro-batch holds: ``train.batch_size``, rounded up to the mesh's batch shards."""
    rows, _ = ft.micro_batching(self.config.train.batch_size, 1,
                                sharding.batch_divisor(trainer.mesh))
    return rows

  def _result(self, n: int, params, records: list[dict]) -> IterationResult:
    """The block's result: its summary (``rl_*``) from the per-step records."""
    mean = lambda key: float(np.mean([r[key] for r in records if key in r])) if any(
        key in r for r in records) else None
    tenth = max(1, len(records) // 10)
    by_d = collections.defaultdict(lambda: [0.0, 0])
    for r in records:
      for d, (right, total) in r["reward_by_difficulty"].items():
        by_d[d][0] += right
        by_d[d][1] += total
    name = self.task.difficulty_name
    extra = {
        "rl_advantage": self.kind, "rl_drop_uniform_groups": self.drop,
        "rl_policy_steps": len(records),
        "rl_reward_mean": mean("reward_mean"),
        "rl_reward_first": float(np.mean([r["reward_mean"] for r in records[:tenth]])),
        "rl_reward_last": float(np.mean([r["reward_mean"] for r in records[-tenth:]])),
        "rl_all_right_share": mean("all_right_share"), "rl_all_wrong_share": mean("all_wrong_share"),
        "rl_kl": records[-1].get("kl"), "rl_entropy": mean("entropy"),
        "rl_clip_fraction": mean("clip_fraction"),
        "tokens_sampled": int(sum(r["tokens_sampled"] for r in records)),
        "rl_trained_rows": int(sum(r["trained_rows"] for r in records)),
        "rl_steps_without_update": sum(1 for r in records if not r["trained_rows"]),
        "rl_rows_with_advantage": int(sum(r.get("rows_with_advantage", 0) for r in records)),
        f"rl_reward_by_{name}": {d: right / total for d, (right, total) in sorted(by_d.items())},
    }
    if self.hint:  # the hinted retries: all-wrong groups retried, opened, samples that joined
      extra.update({f"rl_{k}": int(sum(r.get(k, 0) for r in records))
                    for k in ("hint_groups", "hint_groups_opened", "hint_joined",
                              "hint_tokens_sampled")})
    losses = [r["loss"] for r in records if "loss" in r]
    mu = self.config.rl.inner_updates  # each sampled batch trains mu times
    stats = ft.FinetuneStats(len(records), extra["rl_trained_rows"], 0, extra["rl_trained_rows"],
                             losses[-1] if losses else float("nan"),
                             float(np.mean(losses)) if losses else float("nan"),
                             mu * float(sum(r.get("tokens", 0.0) for r in records)),
                             sequences=mu * extra["rl_trained_rows"])
    asked = sum(r["questions"] for r in records)
    return IterationResult(self.name, params, [], [], train=stats,
                           skipped=sum(r["prompts_skipped_too_long"] for r in records),
                           sample_seconds=sum(r["sample_seconds"] for r in records),
                           train_seconds=sum(r["train_seconds"] for r in records),
                           extra={"train_questions": asked, **extra})


class GRPOHint(GRPO):
  """GRPO whose all-wrong groups are sampled again with STaR's hint (``rl.hint``)."""

  name = "grpo_hint"
  with_hint = True


class ReinforceRej(GRPO):
  """Reinforce with +-1 rewards, groups all right or all wrong dropped (Xiong et al. 2025)."""

  name = "reinforce_rej"
  advantage = "reinforce"
  drop_uniform = True

