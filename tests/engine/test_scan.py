"""Scanned layers (``scan_layers=True``): the loop model's values stacked, the same logits,
train steps, samples and LoRA folds, sharded."""

import jax
import numpy as np
import pytest
from flax import nnx

from helpers.reference import full_logits
from star_jax.engine import batching, lora, params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import Trainer
from star_jax.sampling import Sampler, SamplingParams


def _pair(mesh, preset="tiny", **overrides):
  """(loop graphdef, loop params, scan graphdef, scan params), both from seed 0."""
  cfg = get_preset(preset, **overrides)
  return (*params_lib.init_params(cfg, mesh, seed=0),
          *params_lib.init_params(cfg.replace(scan_layers=True), mesh, seed=0))


def _stacked(params) -> dict:
  """The loop model's ("layers", i, ...) leaves stacked over i, keyed ("layers", ...)."""
  out: dict = {}
  for path, v in nnx.to_flat_state(params):
    key = ("layers",) + path[2:] if path[0] == "layers" else path
    out.setdefault(key, []).append(np.asarray(v.get_value()))
  return {k: np.stack(v) if k[0] == "layers" else v[0] for k, v in out.items()}


def _flat(params) -> dict:
  return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(params)}


@pytest.mark.parametrize("preset", ["tiny", "tiny-gptj"])
def test_the_scanned_model_is_the_loop_model_stacked_and_computes_the_same(preset, mesh8):
  g, p, gs, ps = _pair(mesh8, preset)
  loop, scan = _stacked(p), _flat(ps)
  assert loop.keys() == scan.keys()
  for key in loop:
    np.testing.assert_array_equal(scan[key], loop[key], err_msg=str(key))
  q = ps["layers"]["attn"]["q"][...]
  assert q.shape[0] == 2 and q.sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor", None)  # the layers whole on every device, the rest as in a loop layer
  seq = np.random.default_rng(0).integers(0, 256, 12).tolist()
  np.testing.assert_allclose(full_logits(gs, ps, seq), full_logits(g, p, seq), atol=2e-5)


def _batch():
  rng = np.random.default_rng(0)
  ex = [batching.TrainExample(rng.integers(3, 250, 3).tolist(), rng.integers(3, 250, 6).tolist())
        for _ in range(8)]
  rows = batching.pack(ex, 16, pack_rows=False).batch
  return {k: v.reshape((2, 4) + v.shape[1:]) for k, v in rows.items()}  # 2 micro-batches


def _train(mesh, graphdef, params, steps=3):
  trainer = Trainer(graphdef, mesh, OptimConfig(learning_rate=1e-2, warmup_steps=0, eps=1e-4))
  state, losses = trainer.init(params, copy=True), []
  for _ in range(steps):
    state, m = trainer.step(state, _batch())
    losses.append(float(m["loss"]))
  return losses, trainer.model_params(state)


def test_scanned_rematerialised_train_steps_equal_the_loop_models(mesh8):
  # Remat on both sides: tests/engine/test_decoder.py has remat equal to the plain backward
  # for either layout, so this covers the scanned plain step too.
  g, p, gs, ps = _pair(mesh8, remat=True)
  loop_losses, loop_params = _train(mesh8, g, p)
  scan_losses, scan_params = _train(mesh8, gs, ps)
  assert scan_losses == pytest.approx(loop_losses, rel=1e-5)
  assert loop_losses[-1] < loop_losses[0]  # it trained: the comparison is not of no-ops
  loop, scan = _stacked(loop_params), _flat(scan_params)
  for key in loop:
    np.testing.assert_allclose(scan[key], loop[key], atol=1e-5, err_msg=str(key))


def test_the_scanned_sampler_draws_the_loop_samplers_samples(mesh8):
  cfg = get_preset("tiny")
  g, p, gs, ps = _pair(mesh8)
  rng = np.random.default_rng(1)
  prefix = rng.integers(1, 256, 40).tolist()  # shared by every prompt: the prefix cache path
  prompts = [prefix + rng.integers(1, 256, n).tolist() for n in (3, 7, 1, 5, 2, 4)]
  # Early end ids: the first greedy tokens of half the prompts, so compaction runs too.
  first = Sampler(cfg, g, mesh8, batch_size=8).sample(p, prompts, 1).tokens[:3, 0, 0]
  kw = dict(batch_size=8, stop_check_every=4, end_ids=tuple(int(t) for t in first))
  for sp, n in ((SamplingParams(), 1), (SamplingParams(temperature=0.8), 2)):
    a = Sampler(cfg, g, mesh8, **kw).sample(p, prompts, 16, sp, n=n, seed=4)
    scan = Sampler(cfg.replace(scan_layers=True), gs, mesh8, **kw)
    b = scan.sample(ps, prompts, 16, sp, n=n, seed=4)
    for name in ("tokens", "lengths", "finished"):
      np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-5)
    assert a.lengths.min() < 16 and a.lengths.max() == 16  # some rows ended, some ran on


def test_a_scanned_lora_model_trains_its_stacked_adapters_and_folds(mesh8):
  cfg = get_preset("tiny", scan_layers=True)
  graphdef, base = params_lib.init_params(cfg, mesh8, seed=0)
  lgraphdef, lparams = lora.add_adapters(cfg.replace(lora_rank=4), mesh8, base, seed=1)
  assert lora.split(lparams)[0]["layers"]["attn"]["q_lora"]["lora_a"][...].shape == (2, 64, 4)
  losses, trained = _train(mesh8, lgraphdef, lparams)
  assert losses[-1] < losses[0]
  for a, b in zip(jax.tree.leaves(lora.split(trained)[1]), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)  # the base stays frozen
  folded = lora.fold(lgraphdef, trained)
  seq = [5, 9, 17, 33, 65, 129]
  with_adapters = full_logits(lgraphdef, trained, seq)
  assert np.abs(with_adapters - full_logits(graphdef, base, seq)).max() > 1e-2
  np.testing.assert_allclose(full_logits(graphdef, folded, seq), with_adapters, atol=2e-5)


def test_bad_remat_policy_is_rejected():
  with pytest.raises(ValueError, match="remat_policy"):
    get_preset("tiny", remat_policy="save_everything")
