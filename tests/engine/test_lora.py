"""LoRA: only the adapters train, the base stays bit-identical, folding gives the same model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from star_jax.engine import batching, lora, params as params_lib
from star_jax.hub.checkpointer import Checkpointer
from star_jax.engine.decoder import causal_mask
from star_jax.engine.model_config import get_preset, lora_targets
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import Trainer
from star_jax.sampling import Sampler

RANK = 4


def _models(mesh, preset="tiny", **lora_kw):
  """(plain graphdef, plain params, LoRA graphdef, LoRA params on those very base weights)."""
  cfg = get_preset(preset)
  graphdef, base = params_lib.init_params(cfg, mesh, seed=0)
  lgraphdef, lparams = lora.add_adapters(cfg.replace(lora_rank=RANK, **lora_kw), mesh, base,
                                         seed=1)
  return graphdef, base, lgraphdef, lparams


def _batch():
  rng = np.random.default_rng(0)
  ex = [batching.TrainExample(rng.integers(3, 250, 3).tolist(), rng.integers(3, 250, 5).tolist())
        for _ in range(8)]
  return {k: v[None] for k, v in batching.pack(ex, 8, pack_rows=False).batch.items()}


def _train(mesh, graphdef, params, steps):
  trainer = Trainer(graphdef, mesh, OptimConfig(learning_rate=1e-2, warmup_steps=0))
  state, batch, losses = trainer.init(params, copy=True), _batch(), []
  for _ in range(steps):
    state, m = trainer.step(state, batch)
    losses.append(float(m["loss"]))
  return trainer, state, losses


def _logits(graphdef, params, tokens_BxT):
  model = params_lib.merge(graphdef, params)
  B, T = tokens_BxT.shape
  h, _ = model(tokens_BxT, jnp.broadcast_to(jnp.arange(T), (B, T)),
               causal_mask(jnp.ones((B, T), jnp.int32)))
  return np.asarray(model.logits(h))


def _host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_fresh_adapters_change_nothing_and_count_as_the_config_says(mesh1):
  graphdef, base, lgraphdef, lparams = _models(mesh1)
  adapters, lbase = lora.split(lparams)
  cfg = get_preset("tiny").replace(lora_rank=RANK)
  # Per layer, r * (in + out): q, o 64 <-> 64; k, v 64 -> 32; gate, up, down 64 <-> 128.
  per_layer = RANK * (2 * (64 + 64) + 2 * (64 + 32) + 3 * (64 + 128))
  assert params_lib.count(adapters) == cfg.num_lora_params() == 2 * per_layer
  assert params_lib.count(lparams) == cfg.num_params()
  assert jax.tree.structure(lbase) == jax.tree.structure(base)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 9)))
  np.testing.assert_array_equal(_logits(lgraphdef, lparams, tokens),
                                _logits(graphdef, base, tokens))


def test_lora_trains_only_adapters_and_leaves_the_base_bit_identical(mesh1):
  graphdef, base, lgraphdef, lparams = _models(mesh1)
  before = _host(lora.split(lparams)[1])
  trainer, state, losses = _train(mesh1, lgraphdef, lparams, steps=15)
  assert losses[-1] < 0.7 * losses[0], losses
  # What the step carried, differentiated and donated: the adapters, nothing else.
  adapter_shapes = {x.shape for x in jax.tree.leaves(lora.split(lparams)[0])}
  assert {x.shape for x in jax.tree.leaves(state.params)} == adapter_shapes
  opt_shapes = [x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim]
  assert set(opt_shapes) == adapter_shapes
  assert sum(np.prod(s) for s in opt_shapes) == 2 * params_lib.count(state.params)  # mu, nu
  trained = trainer.model_params(state)
  assert jax.tree.structure(trained) == jax.tree.structure(lparams)
  for a, b in zip(_host(lora.split(trained)[1]), before):
    np.testing.assert_array_equal(a, b)
  assert not lora.adapters_are_fresh(trained)


def test_folded_weights_give_the_adapter_models_logits(mesh1):
  graphdef, base, lgraphdef, lparams = _models(mesh1)
  trainer, state, _ = _train(mesh1, lgraphdef, lparams, steps=5)
  trained = trainer.model_params(state)
  folded = lora.fold(lgraphdef, trained)  # W + scale * A @ B, a plain model
  assert jax.tree.structure(folded) == jax.tree.structure(base)
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 256, (2, 9)))
  with_adapters = _logits(lgraphdef, trained, tokens)
  assert np.abs(with_adapters - _logits(graphdef, base, tokens)).max() > 1e-2  # it learned
  np.testing.assert_allclose(_logits(graphdef, folded, tokens), with_adapters, atol=2e-5)
  # By hand for one kernel: the fold is exactly W + (alpha / r) * A @ B.
  a = trained["layers"][0]["attn"]["q_lora"]["lora_a"][...]
  b = trained["layers"][0]["attn"]["q_lora"]["lora_b"][...]
  w = base["layers"][0]["attn"]["q"][...]
  np.testing.assert_allclose(folded["layers"][0]["attn"]["q"][...],
                             w + (8.0 / RANK) * (a @ b).reshape(w.shape), atol=1e-6)


def test_sampler_samples_with_base_plus_adapters(mesh1):
  graphdef, base, lgraphdef, lparams = _models(mesh1)
  trainer, state, _ = _train(mesh1, lgraphdef, lparams, steps=5)
  trained = trainer.model_params(state)
  cfg = get_preset("tiny")
  prompts = [[5, 6, 7], [9, 10, 11, 12]]

  def sample(c, g, p):
    return Sampler(c, g, mesh1, end_ids=(), pad_id=0, batch_size=2).sample(
        p, prompts, max_new_tokens=6, seed=0)
  got = sample(cfg.replace(lora_rank=RANK), lgraphdef, trained).tokens.tolist()
  assert got == sample(cfg, graphdef, lora.fold(lgraphdef, trained)).tokens.tolist()
  assert got != sample(cfg, graphdef, base).tokens.tolist()


def test_targets_pick_the_kernels_and_shard_like_them(mesh8):
  assert lora_targets("attention") == ("q", "k", "v", "o")
  assert lora_targets("q, v,mlp")[:2] == ("q", "v")
  _, _, _, lparams = _models(mesh8, lora_targets=lora_targets("q,down"))
  layer = lora.split(lparams)[0]["layers"][0]
  assert set(layer["attn"]) == {"q_lora"} and set(layer["mlp"]) == {"down_lora"}

  def spec(v):
    return tuple(v[...].sharding.spec)
  # A's input axis as the kernel's input (embed -> fsdp), B's output as its output, rank whole.
  assert spec(layer["attn"]["q_lora"]["lora_a"]) == ("fsdp", None)
  assert spec(layer["attn"]["q_lora"]["lora_b"]) == (None, "tensor")
  assert spec(layer["mlp"]["down_lora"]["lora_a"]) == ("tensor", None)
  assert spec(layer["mlp"]["down_lora"]["lora_b"]) == (None, "fsdp")
  with pytest.raises(ValueError, match="unknown lora_targets"):
    get_preset("tiny").replace(lora_rank=2, lora_targets=("qq",))


def test_a_sharded_lora_step_matches_the_unsharded_one(mesh1, mesh8):
  losses = {}
  for name, mesh in (("1", mesh1), ("8", mesh8)):
    _, _, lgraphdef, lparams = _models(mesh, preset="tiny-gptj")
    trainer, state, losses[name] = _train(mesh, lgraphdef, lparams, steps=3)
    losses[name + "p"] = _host(state.params)
  assert losses["1"] == pytest.approx(losses["8"], rel=1e-5)
  for a, b in zip(losses["1p"], losses["8p"]):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_checkpoints_hold_the_base_once_then_adapters_pointing_at_it(mesh1, tmp_path):
  _, base, lgraphdef, lparams = _models(mesh1)
  trainer, state, _ = _train(mesh1, lgraphdef, lparams, steps=3)
  trained = trainer.model_params(state)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=None)
  ckpt.save_model(0, lparams, meta={"iteration": 0})
  with pytest.raises(ValueError, match="fold them"):
    ckpt.save_model(5, trained)  # a base with trained adapters would lose them
  ckpt.save_model(1, trained, base_step=0)
  ckpt.wait()
  assert ckpt.meta(1)["adapters_on"] == 0 and ckpt.meta(0)["lora_base"]
  # Step 0 is a plain model (loadable without LoRA); step 1 restores as base + adapters.
  for a, b in zip(_host(ckpt.restore_model(base, step=0)), _host(base)):
    np.testing.assert_array_equal(a, b)
  fresh = jax.tree.map(jnp.zeros_like, lparams)
  restored = ckpt.restore_model(lparams, step=1)
  assert jax.tree.structure(restored) == jax.tree.structure(trained)
  for a, b in zip(_host(restored), _host(trained)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(  # step 0 restores with the target's own (fresh) adapters
      ckpt.restore_model(fresh, step=0)["layers"][0]["attn"]["q_lora"]["lora_a"][...], 0)
  with pytest.raises(ValueError, match="lora_rank"):
    ckpt.restore_model(base, step=1)
  ckpt.close()
