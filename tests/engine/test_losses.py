"""The policy-gradient loss (losses.PolicyGradient) against TRL's GRPO formula, by hand, and
on a sharded mesh; what it masks, clips and penalises. The DPO loss (losses.DPO) against TRL's
sigmoid DPO formula, likewise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from star_jax.engine import losses, params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import Trainer
from star_jax.star import policy

T = 0.7  # sampling temperature: TRL divides the logits by it before log_softmax
MAX_NEW = 12


def _batch(seed=0, rows=4, vocab=256, pack=False):
  """[1, rows, L] rows of random prompts and completions of different lengths, and advantages
  (with ``pack``: the same sequences packed several a row)."""
  rng = np.random.default_rng(seed)
  prompts = [rng.integers(3, vocab, rng.integers(2, 9)).tolist() for _ in range(rows)]
  completions = [rng.integers(3, vocab, rng.integers(1, MAX_NEW + 1)).tolist() for _ in range(rows)]
  rewards = rng.integers(0, 2, (rows // 2, 2)).astype(np.float32)
  rewards[0] = [1.0, 0.0]  # at least one group with a nonzero advantage
  adv = policy.advantages(rewards, "grpo").reshape(-1)
  return policy.policy_batch(prompts, completions, adv, rows=rows, max_len=64,
                             pack=pack), rewards


def _model(mesh, seed=0):
  graphdef, params = params_lib.init_params(get_preset("tiny"), mesh, seed=seed)
  return graphdef, params


def _forward(mesh):
  """(model, the batch's one micro-batch, its last hidden states, the head's kernel)."""
  graphdef, params = _model(mesh)
  batch, _ = _batch()
  micro = {k: jnp.asarray(v[0]) for k, v in batch.items()}
  model = params_lib.merge(graphdef, params)
  h = losses.hidden(model, micro)
  return model, micro, h, model.head(h.dtype)[0]


def _trl_loss(h, w, targets, mask, adv, loss_type, beta=0.0, ref=None, old=None,
              eps_low=0.2, eps_high=0.2):
  """TRL 1.16's GRPOTrainer._compute_loss (token-level importance sampling, loss types grpo
  and dr_grpo), in torch, on logits h @ w divided by the temperature."""
  logits = (h @ w) / T
  logps = torch.gather(logits.log_softmax(-1), -1, targets[..., None])[..., 0]
  old = logps.detach() if old is None else old
  coef_1 = torch.exp(logps - old)
  coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
  per_token_loss = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
  if beta != 0.0:
    per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
    per_token_loss = per_token_loss + beta * per_token_kl
  if loss_type == "grpo":
    return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
  return (per_token_loss * mask).sum() / (per_token_loss.size(0) * MAX_NEW)


@pytest.mark.parametrize("loss_type,beta", [("grpo", 0.0), ("grpo", 0.04), ("dr_grpo", 0.04)])
def test_loss_and_gradient_equal_trls_grpo_formula(mesh1, loss_type, beta, monkeypatch):
  model, micro, h, w = _forward(mesh1)
  rng = np.random.default_rng(1)
  ref = np.asarray(micro["targets"], np.float32) * 0 - rng.uniform(3, 7, micro["targets"].shape)
  micro["ref_logprobs"] = jnp.asarray(ref, jnp.float32)
  loss = losses.PolicyGradient(temperature=T, kl_beta=beta, ref_logprobs=True,
                               normalize=policy.NORMALIZE[loss_type], max_completion=MAX_NEW)
  monkeypatch.setattr(losses, "LOGITS_CHUNK_ELEMENTS", 2 * 256 * 8)  # the chunked head too

  def ours(h, w):
    logp, ent = losses.token_logprobs(h, w, None, micro["targets"], T)
    total, denom, _ = loss.terms(logp, micro, ent)
    return total / denom

  value, (gh, gw) = jax.value_and_grad(ours, argnums=(0, 1))(h, w)
  th = torch.tensor(np.asarray(h), requires_grad=True)
  tw = torch.tensor(np.asarray(w), requires_grad=True)
  expected = _trl_loss(th, tw, torch.tensor(np.asarray(micro["targets"]), dtype=torch.long),
                       torch.tensor(np.asarray(micro["loss_mask"])),
                       torch.tensor(np.asarray(micro["advantages"])[:, 0]), loss_type, beta,
                       torch.tensor(ref))
  expected.backward()
  assert float(value) == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
  np.testing.assert_allclose(np.asarray(gh), th.grad.numpy(), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy(), rtol=1e-4, atol=1e-7)
  # and the whole loss, from the model, is the same number
  total, denom, sums = loss(model, micro)
  assert float(total / denom) == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
  assert float(sums["tokens"]) == float(np.asarray(micro["loss_mask"]).sum())


def test_advantages_equal_trls_group_normalisation():
  rewards = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0]], np.float32)
  r = torch.tensor(rewards)
  mean = r.mean(1, keepdim=True)
  trl = (r - mean) / (r.std(1, keepdim=True) + 1e-4)  # torch's std is unbiased, as TRL's nanstd
  np.testing.assert_allclose(policy.advantages(rewards, "grpo"), trl.numpy(), rtol=1e-6)
  np.testing.assert_allclose(policy.advantages(rewards, "dr_grpo"), (r - mean).numpy())


def test_prompt_tokens_carry_no_loss_or_gradient(mesh1):
  model, micro, h, w = _forward(mesh1)
  loss = losses.PolicyGradient(temperature=T)

  def f(logp):
    total, denom, _ = loss.terms(logp, micro)
    return total / denom

  logp, _ = losses.token_logprobs(h, w, None, micro["targets"], T)
  g = np.asarray(jax.grad(f)(logp))
  mask = np.asarray(micro["loss_mask"])
  assert (g[mask == 0] == 0).all() and (g[mask == 1] != 0).any()
  # changing a prompt position's target changes nothing
  first = int(np.argmax(mask[0] > 0))
  other = dict(micro, targets=micro["targets"].at[0, max(first - 1, 0)].set(7))
  logp2, _ = losses.token_logprobs(h, w, None, other["targets"], T)
  assert float(f(logp2)) == pytest.approx(float(f(logp)), rel=1e-6)


def test_the_clipped_ratio_matches_a_hand_computation():
  """Two tokens of one row: ratio 1.5 with A > 0 is clipped at 1.2, ratio 0.5 with A > 0 is
  not (min picks the unclipped 0.5); with A < 0 the low clip holds instead."""
  logp = jnp.log(jnp.array([[1.5, 0.5]], jnp.float32) * 0.1)
  old = jnp.log(jnp.array([[0.1, 0.1]], jnp.float32))
  for adv, expected_tokens, held in [(2.0, [-1.2 * 2, -0.5 * 2], 1), (-2.0, [1.5 * 2, 0.8 * 2], 1)]:
    micro = {"loss_mask": jnp.ones((1, 2)), "advantages": jnp.array([adv]), "old_logprobs": old}
    loss = losses.PolicyGradient(old_logprobs=True, normalize="token")
    total, denom, sums = loss.terms(logp, micro)
    assert float(total) == pytest.approx(sum(expected_tokens), rel=1e-5)
    assert float(denom) == 2 and float(sums["clip_fraction"]) == held
  # the gradient through a clipped token is zero
  micro = {"loss_mask": jnp.ones((1, 2)), "advantages": jnp.array([2.0]), "old_logprobs": old}
  g = jax.grad(lambda x: losses.PolicyGradient(old_logprobs=True).terms(x, micro)[0])(logp)
  assert float(g[0, 0]) == 0 and float(g[0, 1]) != 0


def test_kl_is_zero_at_the_reference_and_its_penalty_then_changes_nothing(mesh1):
  graphdef, params = _model(mesh1)
  batch, _ = _batch()
  trainer = Trainer(graphdef, mesh1, OptimConfig(learning_rate=1e-3, warmup_steps=0))
  ref = trainer.logprobs(params, batch, T)
  micro = {k: jnp.asarray(v[0]) for k, v in batch.items()}
  micro["ref_logprobs"] = ref[0]
  model = params_lib.merge(graphdef, params)
  plain = losses.PolicyGradient(temperature=T, ref_logprobs=True)
  penal = losses.PolicyGradient(temperature=T, ref_logprobs=True, kl_beta=0.5)
  t0, d0, s0 = plain(model, micro)
  t1, d1, s1 = penal(model, micro)
  assert abs(float(s0["kl"])) < 1e-5 and float(t1 / d1) == pytest.approx(float(t0 / d0), abs=1e-6)
  # the reference's log-probs are the model's own, position by position
  logp, _ = losses.token_logprobs(losses.hidden(model, micro), *model.head(jnp.float32),
                                  micro["targets"], T)
  np.testing.assert_allclose(np.asarray(ref[0]), np.asarray(logp), atol=1e-5)


def _pg_step(mesh, batch, loss):
  graphdef, params = _model(mesh)
  # Adam's eps of 1e-3 keeps an update linear in a small gradient: float32 reductions in another
  # order then move a weight by ~1e-9, where at 1e-8 they could flip a near-zero one by 2 lr.
  trainer = Trainer(graphdef, mesh, OptimConfig(learning_rate=1e-3, warmup_steps=0, eps=1e-3),
                    loss=loss)
  state = trainer.init(params)
  batch = dict(batch, ref_logprobs=np.asarray(trainer.logprobs(params, batch, T)))
  if getattr(loss, "old_logprobs", False):
    batch["old_logprobs"] = np.asarray(batch["ref_logprobs"]) - 0.1  # a ratio off 1: clips act
  state, metrics = trainer.step(state, batch)
  state, metrics = trainer.step(state, batch)
  return jax.tree.map(np.asarray, trainer.model_params(state)), jax.tree.map(float, metrics)


def test_a_policy_step_sharded_equals_one_device(mesh1, mesh8):
  batch, _ = _batch(rows=8)
  batch = {k: np.concatenate([v, v[:, ::-1]]) for k, v in batch.items()}  # 2 micro-batches
  loss = losses.PolicyGradient(temperature=T, kl_beta=0.04, ref_logprobs=True,
                               old_logprobs=True)
  p1, m1 = _pg_step(mesh1, batch, loss)
  p8, m8 = _pg_step(mesh8, batch, loss)
  for k in ("loss", "kl", "entropy", "clip_fraction", "grad_norm", "tokens"):
    assert m8[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k
  assert 0 < m1["clip_fraction"] < 1
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_packed_rows_step_exactly_as_one_sequence_a_row(mesh1):
  """rl.pack_rows: the same sequences several a row (fewer rows) give the same loss, metrics
  and update under every normalisation, KL and clipping included."""
  batch, _ = _batch(rows=8)
  packed, _ = _batch(rows=8, pack=True)
  assert packed["tokens"].shape[1] < batch["tokens"].shape[1]  # fewer rows to compute
  assert packed["loss_mask"].sum() == batch["loss_mask"].sum()
  for normalize in ("sequence", "constant", "token"):
    loss = losses.PolicyGradient(temperature=T, kl_beta=0.04, ref_logprobs=True,
                                 old_logprobs=True, normalize=normalize, max_completion=MAX_NEW)
    p1, m1 = _pg_step(mesh1, batch, loss)
    p2, m2 = _pg_step(mesh1, packed, loss)
    for k in ("loss", "kl", "entropy", "clip_fraction", "grad_norm", "tokens"):
      assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), (normalize, k)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_micro_batches_accumulate_to_the_whole_batch(mesh1):
  """Two micro-batches of 4 rows step exactly as one of 8 (the loss's own denominator)."""
  batch, _ = _batch(rows=8)
  halves = {k: v.reshape((2, 4) + v.shape[2:]) for k, v in batch.items()}
  dpo = losses.DPO(beta=0.1)  # (chosen, rejected) pairs: whole in each half (the verifier's)
  for normalize in ("sequence", "constant", "token", dpo):
    loss = dpo if normalize is dpo else losses.PolicyGradient(
        temperature=T, ref_logprobs=True, normalize=normalize, max_completion=MAX_NEW)
    p1, m1 = _pg_step(mesh1, batch, loss)
    p2, m2 = _pg_step(mesh1, halves, loss)
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5, abs=1e-7), normalize
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="normalize"):
    losses.PolicyGradient(normalize="rows")
  with pytest.raises(ValueError, match="max_completion"):
    losses.PolicyGradient(normalize="constant")
  with pytest.raises(ValueError, match="ref_logprobs"):
    losses.PolicyGradient(kl_beta=0.1)


def _trl_dpo_loss(h, w, targets, mask, ref, beta):
  """TRL 1.16's DPOTrainer sigmoid loss: rows [chosen, rejected] pairs, completion-token
  log-probs summed (at temperature 1), -logsigmoid(beta * delta) averaged over the pairs."""
  logps = torch.gather((h @ w).log_softmax(-1), -1, targets[..., None])[..., 0]
  seq = (logps * mask).sum(-1)
  ref_seq = (ref * mask).sum(-1)
  chosen, rejected = seq[0::2], seq[1::2]
  ref_chosen, ref_rejected = ref_seq[0::2], ref_seq[1::2]
  delta = (chosen - ref_chosen) - (rejected - ref_rejected)
  return -torch.nn.functional.logsigmoid(beta * delta).mean()


def test_dpo_loss_and_gradient_equal_trls_sigmoid_formula(mesh1):
  model, micro, h, w = _forward(mesh1)
  ref = -np.random.default_rng(2).uniform(3, 7, micro["targets"].shape).astype(np.float32)
  micro["ref_logprobs"] = jnp.asarray(ref)
  loss = losses.DPO(beta=0.1)

  def ours(h, w):
    logp, _ = losses.token_logprobs(h, w, None, micro["targets"], 1.0)
    total, denom, _ = loss.terms(logp, micro)
    return total / denom

  value, (gh, gw) = jax.value_and_grad(ours, argnums=(0, 1))(h, w)
  th = torch.tensor(np.asarray(h), requires_grad=True)
  tw = torch.tensor(np.asarray(w), requires_grad=True)
  expected = _trl_dpo_loss(th, tw, torch.tensor(np.asarray(micro["targets"]), dtype=torch.long),
                           torch.tensor(np.asarray(micro["loss_mask"])), torch.tensor(ref), 0.1)
  expected.backward()
  assert float(value) == pytest.approx(expected.item(), rel=1e-5)
  np.testing.assert_allclose(np.asarray(gh), th.grad.numpy(), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy(), rtol=1e-4, atol=1e-7)
  total, denom, sums = loss(model, micro)
  assert float(total / denom) == pytest.approx(expected.item(), rel=1e-5)
  assert float(sums["pairs"]) == 2


def test_dpo_gradient_is_zero_when_chosen_equals_rejected(mesh1):
  model, micro, h, w = _forward(mesh1)
  same = {k: jnp.stack([v[0], v[0], v[2], v[2]]) for k, v in micro.items() if k != "advantages"}
  same["ref_logprobs"] = jnp.full(same["targets"].shape, -5.0)
  h = losses.hidden(model, same)

  def f(h, w):
    logp, _ = losses.token_logprobs(h, w, None, same["targets"], 1.0)
    total, denom, _ = losses.DPO(beta=0.5).terms(logp, same)
    return total / denom

  value, (gh, gw) = jax.value_and_grad(f, argnums=(0, 1))(h, w)
  assert float(value) == pytest.approx(np.log(2), rel=1e-6)
  # the chosen row's pull and the rejected row's push cancel in every shared weight
  assert float(jnp.abs(gw).max()) < 1e-7 and float(jnp.abs(gh).max()) > 1e-4
  np.testing.assert_allclose(np.asarray(gh[0]), -np.asarray(gh[1]), atol=1e-7)


def test_a_dpo_step_sharded_equals_one_device_and_reports_pair_means(mesh1, mesh8):
  batch, _ = _batch(rows=8)
  p1, m1 = _pg_step(mesh1, batch, losses.DPO(beta=0.1))
  p8, m8 = _pg_step(mesh8, batch, losses.DPO(beta=0.1))
  assert m1["pairs"] == 4 and 0 <= m1["accuracy"] <= 1
  for k in ("loss", "accuracy", "margin", "chosen_reward", "grad_norm", "pairs", "tokens"):
    assert m8[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
