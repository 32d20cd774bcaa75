"""Training: loss mask, packing, accumulation, schedule, optimizer pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.engine import batching, params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.engine.optim import OptimConfig, make_schedule
from star_jax.engine.trainer import Trainer, loss_sums


def test_loss_mask_covers_exactly_the_completion_tokens():
  ex = [batching.TrainExample([10, 11, 12], [20, 21]), batching.TrainExample([30], [40, 41, 42])]
  packed = batching.pack(ex, seq_len=16)
  b = packed.batch
  assert b["tokens"].shape == (1, 16)  # both fit in one row
  # Example 1: inputs 10 11 12 20 predict 11 12 20 21; loss only where the target is 20, 21.
  np.testing.assert_array_equal(b["tokens"][0, :7], [10, 11, 12, 20, 30, 40, 41])
  np.testing.assert_array_equal(b["targets"][0, :7], [11, 12, 20, 21, 40, 41, 42])
  np.testing.assert_array_equal(b["loss_mask"][0, :7], [0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(b["segment_ids"][0, :8], [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(b["positions"][0, :7], [0, 1, 2, 3, 0, 1, 2])
  assert b["loss_mask"].sum() == 5 == sum(len(e.completion) for e in ex)


def test_unpacked_rows_and_too_long_examples_are_counted():
  ex = [batching.TrainExample([1, 2], [3]), batching.TrainExample([1] * 20, [2] * 20),
        batching.TrainExample([4], [5, 6])]
  packed = batching.pack(ex, seq_len=8, pack_rows=False)
  assert packed.batch["tokens"].shape == (2, 8)
  assert packed.num_examples == 2 and packed.num_too_long == 1
  with pytest.raises(ValueError, match="empty completion"):
    batching.pack([batching.TrainExample([1], [])], 8)


def test_loss_counts_only_masked_tokens(mesh1):
  """The reported loss is the mean cross-entropy over exactly the masked targets."""
  cfg = get_preset("tiny")
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=0)
  ex = [batching.TrainExample([5, 6, 7], [8, 9]), batching.TrainExample([1], [2, 3, 4])]
  b = batching.pack(ex, 12).batch
  total, count = loss_sums(params_lib.merge(graphdef, params),
                           {k: jnp.asarray(v) for k, v in b.items()})
  assert float(count) == 5
  from helpers.reference import full_logits
  expected = 0.0
  for e in ex:
    seq = list(e.prompt) + list(e.completion)
    logp = jax.nn.log_softmax(full_logits(graphdef, params, seq), -1)
    for t in range(len(e.prompt), len(seq)):
      expected -= float(logp[t - 1, seq[t]])
  assert float(total) == pytest.approx(expected, rel=1e-5)


def _step(mesh, batch, seed=0, eps=1e-8):
  cfg = get_preset("tiny")
  graphdef, params = params_lib.init_params(cfg, mesh, seed=seed)
  trainer = Trainer(graphdef, mesh, OptimConfig(learning_rate=1e-3, warmup_steps=0, eps=eps))
  state, metrics = trainer.step(trainer.init(params), batch)
  return state, {k: float(v) for k, v in metrics.items()}


def test_accumulating_k_microbatches_equals_one_big_batch(mesh1):
  rng = np.random.default_rng(0)
  # Uneven completion lengths: a mean of per-micro-batch means would differ from the truth.
  ex = [batching.TrainExample(rng.integers(3, 250, 3).tolist(),
                              rng.integers(3, 250, int(rng.integers(1, 12))).tolist())
        for _ in range(8)]
  rows = batching.pack(ex, 16, pack_rows=False).batch
  big = {k: v[None] for k, v in rows.items()}  # [1, 8, L]
  accum = {k: v.reshape((4, 2) + v.shape[1:]) for k, v in rows.items()}  # [4, 2, L]
  # Adam's first step is lr * g / (|g| + eps): with a tiny eps, coordinates whose gradient is
  # ~0 turn summation-order noise into updates of size lr. eps=1e-4 keeps the update a smooth
  # function of the gradient, so the comparison tests accumulation, not rounding.
  s_big, m_big = _step(mesh1, big, eps=1e-4)
  s_acc, m_acc = _step(mesh1, accum, eps=1e-4)
  assert m_acc["tokens"] == m_big["tokens"]
  assert m_acc["loss"] == pytest.approx(m_big["loss"], rel=1e-6)
  assert m_acc["grad_norm"] == pytest.approx(m_big["grad_norm"], rel=1e-5)
  for a, b in zip(jax.tree.leaves(s_acc.params), jax.tree.leaves(s_big.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_training_reduces_loss_and_reports_metrics(mesh1):
  cfg = get_preset("tiny")
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=0)
  trainer = Trainer(graphdef, mesh1, OptimConfig(learning_rate=3e-3, warmup_steps=5))
  state = trainer.init(params)
  ex = [batching.TrainExample([1, 2], [3, 4, 5, 6])] * 8
  batch = {k: v[None] for k, v in batching.pack(ex, 8, pack_rows=False).batch.items()}
  losses, lrs = [], []
  for _ in range(20):
    state, m = trainer.step(state, batch)
    losses.append(float(m["loss"]))
    lrs.append(float(m["learning_rate"]))
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == 20
  np.testing.assert_allclose(lrs[:5], [6e-4, 1.2e-3, 1.8e-3, 2.4e-3, 3e-3], rtol=1e-5)
  assert lrs[-1] == pytest.approx(3e-3)


def test_schedules():
  lin = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=2, schedule="linear",
                                  total_steps=12))
  assert [float(lin(s)) for s in (0, 1, 2, 7, 12)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
  cos = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=0, schedule="cosine",
                                  total_steps=10))
  assert float(cos(5)) == pytest.approx(0.5, abs=1e-6)
  with pytest.raises(ValueError, match="schedule must be"):
    make_schedule(OptimConfig(schedule="step"))


def test_batches_are_deterministic_and_resumable():
  rows = batching.pack([batching.TrainExample([i], [i + 1]) for i in range(10)], 4,
                       pack_rows=False).batch
  full = list(batching.iterate_batches(rows, 4, 6, seed=3))
  resumed = list(batching.iterate_batches(rows, 4, 6, seed=3, start_step=4))
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  # 10 rows in batches of 4: the third batch of each epoch is topped up with padding rows.
  assert full[2]["loss_mask"].sum() == 2
  seen = np.concatenate([b["tokens"][0, :, 0] for b in full[:3]])
  assert sorted(seen[seen > 0].tolist()) == list(range(1, 10))


def test_no_clip_at_clip_norm_zero_and_a_zero_gradient_changes_nothing():
  """``clip_norm=0`` is no clip: a step whose gradient is zero (a policy step whose groups are
  all wrong) leaves the weights as they were, where optax's clip at 0 made them NaN."""
  from star_jax.engine.optim import make_optimizer
  params = {"w": jnp.ones((3, 2))}
  zero = {"w": jnp.zeros((3, 2))}
  for clip in (0.0, 1.0):
    opt = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=0, clip_norm=clip))
    updates, _ = opt.update(zero, opt.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)
  big = {"w": jnp.full((3, 2), 100.0)}  # and a non-zero clip still clips
  opt = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=0, clip_norm=1.0, b1=0.0))
  assert np.isfinite(np.asarray(opt.update(big, opt.init(params), params)[0]["w"])).all()
