"""The decoder: cached decoding equals a full forward; masks; dtypes; config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import mesh_of
from helpers.reference import forward, full_logits
from star_jax.engine import params as params_lib
from star_jax.engine.decoder import attention_path, causal_mask
from star_jax.engine.model_config import get_preset
from star_jax.sampling import SamplingParams
from star_jax.sampling.decode import decode_step, prefill
from star_jax.tasks.line_positions import LineColumnPositions

LINES = dict(positions=LineColumnPositions(tuple(range(0, 256, 5))))
JITTERED = dict(positions=LineColumnPositions(tuple(range(0, 256, 5)), right_aligned=True,
                                              jitter=2))
BOTH = dict(positions=LineColumnPositions(tuple(range(0, 256, 5)), right_aligned=True, jitter=2,
                                          both_columns=True))


SCAN = dict(scan_layers=True)


@pytest.mark.parametrize("preset,overrides",
                         [("tiny", {}), ("tiny-gptj", {}), ("tiny", LINES), ("tiny", JITTERED),
                          ("tiny", BOTH), ("tiny", SCAN), ("tiny-gptj", SCAN)],
                         ids=["llama", "gptj", "line_column", "right_aligned_jittered",
                              "both_columns_jittered", "llama_scan", "gptj_scan"])
def test_cached_decode_matches_full_forward(preset, overrides, mesh1):
  cfg = get_preset(preset, **overrides)
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=3)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (5, 9, 1)]
  forced = rng.integers(0, cfg.vocab_size, (3, 6))
  Pn = 16
  prompt_BxP = np.zeros((3, Pn), np.int32)
  mask_BxP = np.zeros((3, Pn), np.int32)
  for r, p in enumerate(prompts):  # left padding, as the sampler lays prompts out
    prompt_BxP[r, Pn - len(p):] = p
    mask_BxP[r, Pn - len(p):] = 1
  idx = np.arange(3, dtype=np.int32)
  jit_prefill = jax.jit(prefill, static_argnums=0,
                        static_argnames=("cache_len", "max_new", "sp", "end_ids", "pad_id"))
  step = jax.jit(lambda p, st: decode_step(params_lib.merge(graphdef, p), st))
  state = jit_prefill(graphdef, params, None, prompt_BxP, mask_BxP, idx, idx, 0, 0.0,
                      cache_len=Pn + 8, max_new=8, sp=SamplingParams(), end_ids=(), pad_id=0)
  cached = []
  for t in range(forced.shape[1]):
    state = state._replace(last_token_B=jnp.asarray(forced[:, t], jnp.int32))
    logits_BxV, state = step(params, state)
    cached.append(np.asarray(logits_BxV))
  for r, p in enumerate(prompts):
    ref = full_logits(graphdef, params, p + forced[r].tolist())
    for t in range(forced.shape[1]):
      np.testing.assert_allclose(cached[t][r], ref[len(p) + t], atol=2e-5, rtol=2e-5)


def test_causal_mask_separates_segments():
  seg = jnp.asarray([[1, 1, 2, 2, 2, 0]])
  m = np.asarray(causal_mask(seg))[0]
  expected = np.zeros((6, 6), bool)
  expected[0, 0] = expected[1, 0] = expected[1, 1] = True
  for q in range(2, 5):
    expected[q, 2:q + 1] = True
  np.testing.assert_array_equal(m, expected)


def packed_forward(graphdef, params, tokens, pos, seg):
  model = params_lib.merge(graphdef, params)
  h, _ = model(tokens, pos, causal_mask(seg))
  return model.logits(h)[0]


def test_packed_segments_do_not_see_each_other(mesh1):
  """Logits of a segment are the same alone or packed after another segment."""
  cfg = get_preset("tiny")
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=0)
  a, b = [5, 6, 7, 8], [9, 10, 11]
  tokens = jnp.asarray([a + b])
  seg = jnp.asarray([[1] * 4 + [2] * 3])
  pos = jnp.asarray([[0, 1, 2, 3, 0, 1, 2]])
  packed = np.asarray(jax.jit(packed_forward, static_argnums=0)(graphdef, params, tokens, pos, seg))
  np.testing.assert_allclose(packed[:4], full_logits(graphdef, params, a), atol=1e-5)
  np.testing.assert_allclose(packed[4:], full_logits(graphdef, params, b), atol=1e-5)


def test_bfloat16_compute_is_close_to_float32(mesh1):
  cfg = get_preset("tiny")
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=0)
  g16, _ = params_lib.abstract_model(cfg.replace(dtype="bfloat16"))
  seq = [1, 2, 3, 4, 5, 6]
  ref = full_logits(graphdef, params, seq)
  low = full_logits(g16, params, seq)
  assert low.dtype == np.float32  # logits always float32
  assert np.abs(low - ref).max() < 0.1 * np.abs(ref).max()


def test_bfloat16_params_and_remat(mesh1):
  cfg = get_preset("tiny", param_dtype="bfloat16", dtype="bfloat16", remat=True)
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=0)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  assert np.isfinite(full_logits(graphdef, params, [1, 2, 3])).all()


@pytest.mark.parametrize("lora_rank,overrides", [
    (0, {}), (4, {}), (4, dict(scan_layers=True)),
    (0, dict(scan_layers=True, remat_policy="dots_with_no_batch_dims_saveable"))],
    ids=["full", "lora", "scan_lora", "scan_dots_no_batch"])
def test_remat_gives_the_gradients_of_the_plain_backward(lora_rank, overrides, mesh1):
  from star_jax.engine import lora
  from star_jax.engine.trainer import loss_sums
  seg = np.asarray([[1] * 10 + [2] * 6])
  tokens = np.random.default_rng(2).integers(0, 256, seg.shape)
  micro = {"tokens": jnp.asarray(tokens), "targets": jnp.asarray(np.roll(tokens, -1, 1)),
           "loss_mask": jnp.ones(seg.shape, jnp.float32), "segment_ids": jnp.asarray(seg),
           "positions": jnp.asarray(np.r_[0:10, 0:6][None], jnp.int32)}
  grads = []
  for remat in (False, True):
    cfg = get_preset("tiny", remat=remat, **overrides)
    graphdef, params = params_lib.init_params(cfg, mesh1, seed=0)
    if lora_rank:  # the frozen base is not differentiated (remat used to fail here)
      graphdef, params = lora.add_adapters(cfg.replace(lora_rank=lora_rank), mesh1, params)
      params = jax.tree.map(lambda x: x + 0.01, params)  # B != 0: every adapter matters
    trained, frozen = lora.partition(params)
    f = lambda p, g=graphdef, fr=frozen: loss_sums(params_lib.merge(g, p, fr), micro)[0]
    grads.append(jax.jit(jax.grad(f))(trained))
  for a, b in zip(*(jax.tree.leaves(g) for g in grads)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_param_count_matches_config(mesh1):
  for name in ("tiny", "tiny-gptj"):
    cfg = get_preset(name)
    assert params_lib.count(params_lib.abstract_model(cfg)[1]) == cfg.num_params()
  # Analytic count vs the published size of SmolLM2-135M (134,515,008 parameters).
  assert get_preset("smollm2-135m").num_params() == 134_515_008


def test_bad_configs_are_rejected():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    get_preset("tiny", num_kv_heads=3)
  with pytest.raises(ValueError, match="block_type"):
    get_preset("tiny", block_type="mamba")
  with pytest.raises(ValueError, match="unknown model preset"):
    get_preset("nope")
  with pytest.raises(ValueError, match="rotary_dim"):
    get_preset("tiny", rotary_dim=7)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gptj"])
def test_dot_product_attention_path_matches_the_einsum_path(preset, mesh1):
  """jax.nn.dot_product_attention (the path off CPU) against the einsum path, on CPU: a packed
  training batch's loss and gradients, and greedy samples (prefill through it, then decode)."""
  from star_jax.engine.trainer import loss_sums
  from star_jax.sampling import Sampler
  cfgs = {a: get_preset(preset, attention=a) for a in ("einsum", "dot_product")}
  models = {a: params_lib.init_params(c, mesh1, seed=5) for a, c in cfgs.items()}
  params = models["einsum"][1]
  rng = np.random.default_rng(1)
  seg = np.asarray([[1] * 7 + [2] * 6 + [0] * 3, [1] * 12 + [0] * 4])  # packed, padded
  tokens = rng.integers(0, cfgs["einsum"].vocab_size, seg.shape)
  micro = {"tokens": jnp.asarray(tokens, jnp.int32), "targets": jnp.asarray(np.roll(tokens, -1, 1)),
           "loss_mask": jnp.asarray(seg > 0, jnp.float32), "segment_ids": jnp.asarray(seg),
           "positions": jnp.asarray(np.concatenate([np.r_[0:7, 0:6, 0:3], np.r_[0:16]])
                                    .reshape(2, 16), jnp.int32)}
  out = {}
  for a, (graphdef, _) in models.items():
    f = lambda p, g=graphdef: loss_sums(params_lib.merge(g, p), micro)[0]
    out[a] = jax.jit(jax.value_and_grad(f))(params)
  np.testing.assert_allclose(out["dot_product"][0], out["einsum"][0], rtol=1e-5)
  for g1, g2 in zip(jax.tree.leaves(out["dot_product"][1]), jax.tree.leaves(out["einsum"][1])):
    np.testing.assert_allclose(g1, g2, atol=2e-5, rtol=1e-4)
  prompts = [[3, 4, 5, 6, 7], [9, 10], [11, 12, 13, 14, 15, 16, 17, 18]]
  samples = [Sampler(cfgs[a], models[a][0], mesh1, batch_size=4).sample(params, prompts, 12)
             for a in ("einsum", "dot_product")]
  np.testing.assert_array_equal(samples[0].tokens, samples[1].tokens)
  np.testing.assert_allclose(samples[0].logprobs, samples[1].logprobs, atol=1e-4)
  with pytest.raises(ValueError, match="attention must be one of"):
    get_preset(preset, attention="flash")
  # What each choice runs (here on CPU; off CPU "auto" takes dot_product for T > 1, einsum for 1).
  assert attention_path("dot_product", 16) == "dot_product"
  assert attention_path("dot_product", 1) == attention_path("auto", 1) == "einsum_cpu"
  assert attention_path("auto", 16) == attention_path("einsum", 16) == "einsum"
