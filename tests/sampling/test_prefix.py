"""Prefix reuse: a shared few-shot block prefilled once, a prompt prefilled once for its n
samples; the samples are those of the plain path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import mesh_of
from helpers.reference import full_logits
from star_jax.engine import params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.sampling import Sampler, SamplingParams
from star_jax.sampling.decode import decode_step, prefill, prefill_prefix
from star_jax.sampling.sampler import shared_prefix_len

PREFIX = list(range(40, 80))  # 40 tokens every prompt starts with
SUFFIXES = [[5, 6, 7], [9], [11, 12, 13, 14, 15, 16], [3, 3], [200, 201, 202, 203], [17]]
PROMPTS = [PREFIX + s for s in SUFFIXES]


@pytest.mark.parametrize("preset", ["tiny", "tiny-gptj"])
def test_decode_after_a_prefix_cache_matches_the_full_forward(preset, mesh1):
  cfg = get_preset(preset)
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=3)
  suffixes, forced = SUFFIXES[:3], np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 5))
  P = 8
  prompt_QxP, mask_QxP = np.zeros((3, P), np.int32), np.zeros((3, P), np.int32)
  for r, s in enumerate(suffixes):
    prompt_QxP[r, P - len(s):], mask_QxP[r, P - len(s):] = s, 1
  idx = np.arange(3, dtype=np.int32)
  prefix_cache = jax.jit(prefill_prefix, static_argnums=0)(graphdef, params,
                                                         jnp.asarray([PREFIX]))
  jit_prefill = jax.jit(prefill, static_argnums=0,
                        static_argnames=("cache_len", "max_new", "sp", "end_ids", "pad_id"))
  state = jit_prefill(graphdef, params, prefix_cache, prompt_QxP, mask_QxP, idx, idx, 0, 0.0,
                      cache_len=len(PREFIX) + P + 8, max_new=8, sp=SamplingParams(), end_ids=(),
                      pad_id=0)
  step = jax.jit(lambda p, st: decode_step(params_lib.merge(graphdef, p), st))
  cached = []
  for t in range(forced.shape[1]):
    state = state._replace(last_token_B=jnp.asarray(forced[:, t], jnp.int32))
    logits_BxV, state = step(params, state)
    cached.append(np.asarray(logits_BxV))
  for r, s in enumerate(suffixes):
    ref = full_logits(graphdef, params, PREFIX + s + forced[r].tolist())
    for t in range(forced.shape[1]):
      np.testing.assert_allclose(cached[t][r], ref[len(PREFIX) + len(s) + t], atol=2e-5,
                                 rtol=2e-5)


def _pair(preset, mesh, **kw):
  cfg = get_preset(preset)
  graphdef, params = params_lib.init_params(cfg, mesh, seed=0)
  reuse = Sampler(cfg, graphdef, mesh, batch_size=4, **kw)
  plain = Sampler(cfg, graphdef, mesh, batch_size=4, prefix_reuse=False, **kw)
  return params, reuse, plain


@pytest.mark.parametrize("preset,shape", [("tiny", (1, 1, 1)), ("tiny-gptj", (1, 1, 1)),
                                          ("tiny", (2, 2, 2))], ids=["llama", "gptj", "sharded"])
def test_reuse_gives_the_samples_of_the_plain_path(preset, shape):
  params, reuse, plain = _pair(preset, mesh_of(shape))
  greedy = [s.sample(params, PROMPTS, 12) for s in (reuse, plain)]
  np.testing.assert_array_equal(greedy[0].tokens, greedy[1].tokens)
  np.testing.assert_array_equal(greedy[0].lengths, greedy[1].lengths)
  hot = SamplingParams(temperature=1.0, top_k=20)
  sampled = [s.sample(params, PROMPTS, 12, hot, n=3, seed=7) for s in (reuse, plain)]
  np.testing.assert_array_equal(sampled[0].tokens, sampled[1].tokens)
  np.testing.assert_allclose(sampled[0].logprobs, sampled[1].logprobs, atol=1e-4)
  assert len({tuple(t) for t in sampled[0].tokens[0]}) > 1  # the 3 samples differ
  if shape != (1, 1, 1):
    return  # batches hold a multiple of the mesh's batch shards: the counts below are 1-device
  # Batches of 4 rows: greedily 4 prompts (2 batches, the last padded), with 3 samples one
  # prompt each. Without reuse every prompt slot is 46 tokens padded to 48; with it the prefix
  # (40) is prefilled once and the rest (at most 6) padded to 16. A prompt's samples share it.
  assert greedy[1].prefill_tokens == 2 * 4 * 48 and sampled[1].prefill_tokens == 6 * 48
  assert greedy[0].prefill_tokens == 40 + 2 * 4 * 16 and sampled[0].prefill_tokens == 40 + 6 * 16


def test_prompts_without_a_shared_prefix_take_the_plain_path(mesh1):
  params, reuse, plain = _pair("tiny", mesh1)
  short = [[1] * 20 + s for s in SUFFIXES]  # 20 shared tokens: under min_prefix (32)
  assert shared_prefix_len(short) == 20
  a, b = reuse.sample(params, short, 8), plain.sample(params, short, 8)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.prefill_tokens == b.prefill_tokens
  assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # never the whole of a prompt


def test_a_prefix_without_room_for_the_question_is_an_error(mesh1):
  params, reuse, _ = _pair("tiny", mesh1)  # max_seq_len 256
  long = [list(range(1, 241)) + s for s in SUFFIXES]
  with pytest.raises(ValueError, match="max_seq_len"):
    reuse.sample(params, long, 16)
