"""GRPO with STaR's hint and TRICE (star/grpo.py, star/trice.py) against a scripted sampler
(helpers/scripted.py) and a trainer that records its batches: which samples join which group,
on which prompt, with which advantage; TRICE's memory and its control-variate weights; and
TRICE's gradient against STaR's where the two must agree. End to end, resumed after a kill,
and learning: test_grpo.py and test_learning.py."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.arithmetic_texts import TASK, hint_copied, other_path, right, wrong
from helpers.scripted import ScriptedSampler, experiment
from star_jax import config as config_lib
from star_jax.data import DataConfig
from star_jax.engine import losses, params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.star import methods, policy
from star_jax.star.grpo import GRPOHint
from star_jax.star.trice import Trice, trice_weights

MODEL = {"w": np.ones(2, np.float32)}


class RecordingTrainer:
  """What a policy step needs of a trainer; records each update's batch."""
  mesh = types.SimpleNamespace(shape={})  # one batch shard

  def __init__(self):
    self.batches = []

  def forward_params(self, state):
    return state.params

  def step(self, state, batch):
    self.batches.append(batch)
    return state, {"loss": 0.0, "tokens": float(np.sum(batch["loss_mask"]))}


def _method(cls, tmp_path, script, train, **rl):
  cfg = config_lib.load(config_lib.base_config("arithmetic"))
  cfg = dataclasses.replace(
      cfg, star=dataclasses.replace(cfg.star, method=cls.name, samples_per_question=4,
                                    temperature=1.0, few_shot=False),
      rl=dataclasses.replace(cfg.rl, questions_per_step=len(train), log_kl=False, **rl))
  exp = dataclasses.replace(experiment(TASK, train),
                            model_cfg=types.SimpleNamespace(positions=None))
  sampler = ScriptedSampler(TASK, train, script)
  return cls(cfg, exp, sampler, tmp_path), sampler


@pytest.fixture
def rows_trained(monkeypatch):
  """Every (prompt, completion, advantage) a step lays out for the trainer, as text."""
  seen = []
  original = policy.policy_batch

  def spy(prompts, completions, advantages, **kw):
    seen.append([("".join(map(chr, p)), "".join(map(chr, c)), float(a))
                 for p, c, a in zip(prompts, completions, advantages)])
    return original(prompts, completions, advantages, **kw)
  monkeypatch.setattr(policy, "policy_batch", spy)
  return seen


def test_hinted_samples_join_only_all_wrong_groups_on_the_prompt_without_the_hint(
    tmp_path, rows_trained):
  """Question 0's group is mixed: no hint. The others' are all wrong: each is asked again with
  the hint; its two right hinted samples (one with the hint line copied in) join it as the
  task's training text, on the unhinted prompt, with the group's positive advantage."""
  train = TASK.load("train", DataConfig(max_train=4))
  first = train[0].id

  def script(ex, hint):
    if hint:
      return [hint_copied(ex), wrong(ex), right(ex), wrong(ex)]
    return [right(ex)] + [wrong(ex)] * 3 if ex.id == first else [wrong(ex)] * 4
  method, sampler = _method(GRPOHint, tmp_path, script, train)
  trainer = RecordingTrainer()
  state = types.SimpleNamespace(step=0, params=MODEL)
  _, record = method.policy_step(1, 1, trainer, state, train, None)

  assert [hint for _, hint in sampler.calls[0].asked] == [False] * 4
  hinted = [ex.id for ex, hint in sampler.calls[1].asked]
  assert all(h for _, h in sampler.calls[1].asked) and sorted(hinted) == sorted(
      ex.id for ex in train[1:])
  assert record["hint_groups"] == 3 and record["hint_groups_opened"] == 3
  assert record["hint_joined"] == 6 and record["trained_rows"] == 4 + 3 * 6
  assert record["tokens_sampled"] > record["hint_tokens_sampled"] > 0
  (rows,) = rows_trained
  by_prompt = {}
  for prompt, completion, adv in rows:
    by_prompt.setdefault(prompt, []).append((completion, adv))
  for ex in train:
    group = by_prompt.pop(TASK.prompt(ex, hint=False, few_shot=False))  # the unhinted prompt
    if ex.id == first:
      assert len(group) == 4  # G samples, nothing added
      continue
    assert len(group) == 6
    joined = group[4:]
    assert [c for c, _ in joined] == [right(ex)] * 2  # the training text: no hint line
    assert all(a > 0 for _, a in joined) and all(a < 0 for _, a in group[:4])
  assert not by_prompt  # no row on a hinted prompt
  assert not any("Hint" in c for _, c, _ in rows)


def test_grpo_without_the_hint_asks_no_hinted_question(tmp_path, rows_trained):
  train = TASK.load("train", DataConfig(max_train=3))
  method, sampler = _method(methods.GRPO, tmp_path, lambda ex, hint: [wrong(ex)] * 4, train)
  _, record = method.policy_step(1, 1, RecordingTrainer(),
                                 types.SimpleNamespace(step=0, params=MODEL), train, None)
  assert len(sampler.calls) == 1 and "hint_groups" not in record
  assert record["rows_with_advantage"] == 0  # all wrong: no signal without the hint


def test_trice_weights_are_the_leave_one_out_control_variate():
  accepted = np.array([1, 0, 0, 1, 0], bool)
  memory = np.array([1, 1, 0, 1, 1], bool)
  w_mem, w_prop, c = trice_weights(accepted, memory)
  # c_i: the other four's acceptance; 2 accepted in all
  np.testing.assert_allclose(c, [1 / 4, 2 / 4, 2 / 4, 1 / 4, 2 / 4])
  np.testing.assert_allclose(w_mem, [1 - 1 / 4, 1, 0, 1 - 1 / 4, 1])
  np.testing.assert_allclose(w_prop, [0, -2 / 4, 0, 0, -2 / 4])
  w_mem, w_prop, c = trice_weights(accepted, memory, control_variate=False)
  np.testing.assert_allclose(w_mem, [1, 1, 0, 1, 1]) and np.testing.assert_allclose(w_prop, 0)
  _, _, c1 = trice_weights(np.array([1]), np.array([1]))  # one question: no other to lean on
  assert c1.tolist() == [0.0]


def test_trice_memory_is_replaced_only_by_a_right_proposal(tmp_path, rows_trained):
  """First draw of each question: a hinted try, once (0 and 1 right, saved without the hint;
  2 and 3 wrong). The step's proposals: 0 right by another path (replaces its memory), 1 wrong
  (memory kept, the proposal trained against), 2 right (its first memory), 3 wrong (no
  memory: nothing)."""
  train = TASK.load("train", DataConfig(max_train=4))
  ids = [ex.id for ex in train]
  hint_script = {ids[0]: hint_copied, ids[1]: right, ids[2]: wrong, ids[3]: wrong}
  proposal = {ids[0]: other_path, ids[1]: wrong, ids[2]: right, ids[3]: wrong}
  method, sampler = _method(Trice, tmp_path, lambda ex, hint: (
      hint_script if hint else proposal)[ex.id](ex), train)
  method.begin_block(1, MODEL, train, 0)
  assert method.memory == {} and method.hinted == set()
  _, record = method.policy_step(1, 1, RecordingTrainer(),
                                 types.SimpleNamespace(step=0, params=MODEL), train, None)
  proposals, hinted = sampler.calls
  assert [h for _, h in proposals.asked] == [False] * 4 and proposals.n == 1
  assert [h for _, h in hinted.asked] == [True] * 4 and hinted.n == 1
  assert method.memory == {ids[0]: other_path(train[0]), ids[1]: right(train[1]),
                           ids[2]: right(train[2])}
  assert record["init_asked"] == 4 and record["init_kept"] == 2
  assert record["reward_mean"] == 0.5 and record["negative_rows"] == 1
  (rows,) = rows_trained
  got = sorted((p, c, round(w, 6)) for p, c, w in rows)
  prompt = lambda i: TASK.prompt(train[i], hint=False, few_shot=False)
  c_right, c_wrong = 1 / 3, 2 / 3  # leave-one-out acceptance (2 of 4 accepted)
  want = sorted([(prompt(0), other_path(train[0]), round(1 - c_right, 6)),
                 (prompt(1), right(train[1]), 1.0),
                 (prompt(1), wrong(train[1]), round(-c_wrong, 6)),
                 (prompt(2), right(train[2]), round(1 - c_right, 6))])
  assert got == want
  # a second step asks no hint again
  _, record = method.policy_step(1, 2, RecordingTrainer(),
                                 types.SimpleNamespace(step=1, params=MODEL), train, None)
  assert len(sampler.calls) == 3 and record["init_asked"] == 0
  # saved with the checkpoint, restored on resume
  method.save_block_state(1, 2)
  resumed, _ = _method(Trice, tmp_path, lambda ex, hint: pytest.fail("resampled"), train)
  resumed.begin_block(1, MODEL, train, 2)
  assert resumed.memory == method.memory and resumed.hinted == set(ids)


def test_trices_gradient_is_stars_when_every_proposal_is_right_and_c_is_zero(mesh1):
  """Every proposal right, c = 0: each question trains its memory with weight 1, so the
  weighted policy-gradient loss (token mean, T = 1) has the cross-entropy's gradient."""
  graphdef, params = params_lib.init_params(get_preset("tiny"), mesh1, seed=0)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 200, rng.integers(2, 9)).tolist() for _ in range(4)]
  memories = [rng.integers(3, 200, rng.integers(3, 12)).tolist() for _ in range(4)]
  w_mem, w_prop, _ = trice_weights(np.ones(4, bool), np.ones(4, bool), control_variate=False)
  assert (w_prop == 0).all()
  batch = policy.policy_batch(prompts, memories, w_mem, rows=4, max_len=64)
  micro = {k: jnp.asarray(v[0]) for k, v in batch.items()}
  trice_loss = losses.PolicyGradient(temperature=1.0, normalize="token")

  def grads(loss):
    def f(p):
      total, denom, _ = loss(params_lib.merge(graphdef, p), micro)
      return total / denom
    return jax.grad(f)(params)
  g_trice, g_star = grads(trice_loss), grads(losses.CROSS_ENTROPY)
  for a, b in zip(jax.tree.leaves(g_trice), jax.tree.leaves(g_star)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_star)) > 1e-4
  # a control variate changes it: a wrong proposal, weighted -c, pulls the other way
  w_mem, w_prop, c = trice_weights(np.array([1, 1, 1, 0], bool), np.ones(4, bool))
  assert w_prop[3] == pytest.approx(-1.0) and w_mem[:3] == pytest.approx([1 - 2 / 3] * 3)


def test_both_methods_are_one_key_away():
  assert methods.get_method("grpo_hint") is GRPOHint and methods.get_method("trice") is Trice
