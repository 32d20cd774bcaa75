"""The sampler: determinism, seeds, early exit, remainder batches, filtering, stop strings."""

import jax
import numpy as np
import pytest

from conftest import mesh_of
from star_jax.engine import params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.sampling import Sampler, SamplingParams
from star_jax.sampling.sampling_params import pick_tokens

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], [11, 12], [13, 14, 15, 16, 17]]


@pytest.fixture(scope="module")
def setup(mesh1):
  cfg = get_preset("tiny")
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=0)
  return cfg, graphdef, params, mesh1


def test_same_seed_same_samples_different_seed_different(setup):
  cfg, graphdef, params, mesh = setup
  sampler = Sampler(cfg, graphdef, mesh, batch_size=4)
  hot = SamplingParams(temperature=1.0)
  a = sampler.sample(params, PROMPTS, 12, hot, n=2, seed=7)
  b = sampler.sample(params, PROMPTS, 12, hot, n=2, seed=7)
  c = sampler.sample(params, PROMPTS, 12, hot, n=2, seed=8)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert (a.tokens != c.tokens).any()
  assert (a.tokens[:, 0] != a.tokens[:, 1]).any()  # the n samples of a prompt differ too


def test_one_compile_serves_every_temperature(setup):
  # The temperature is a runtime value (B-STaR's probe sweeps several): a new T compiles
  # nothing, and each T is applied (a tiny one is greedy, a cold one differs from a hot one).
  from star_jax.sampling import sampler as sampler_lib
  cfg, graphdef, params, mesh = setup
  sampler = Sampler(cfg, graphdef, mesh, batch_size=4)
  hot = sampler.sample(params, PROMPTS, 12, SamplingParams(temperature=2.0), seed=5)
  compiled = len(sampler_lib._FNS)
  cold = sampler.sample(params, PROMPTS, 12, SamplingParams(temperature=1e-4), seed=5)
  warm = sampler.sample(params, PROMPTS, 12, SamplingParams(temperature=0.7), seed=5)
  assert len(sampler_lib._FNS) == compiled
  greedy = sampler.sample(params, PROMPTS, 12)
  np.testing.assert_array_equal(cold.tokens, greedy.tokens)
  assert (hot.tokens != cold.tokens).any() and (warm.tokens != hot.tokens).any()


def test_samples_do_not_depend_on_batch_size(setup):
  cfg, graphdef, params, mesh = setup
  hot = SamplingParams(temperature=1.0)
  small = Sampler(cfg, graphdef, mesh, batch_size=2).sample(params, PROMPTS, 8, hot, seed=3)
  big = Sampler(cfg, graphdef, mesh, batch_size=8).sample(params, PROMPTS, 8, hot, seed=3)
  np.testing.assert_array_equal(small.tokens, big.tokens)


def test_greedy_ignores_seed_and_matches_argmax_of_forward(setup):
  cfg, graphdef, params, mesh = setup
  sampler = Sampler(cfg, graphdef, mesh, batch_size=4)
  a = sampler.sample(params, PROMPTS, 10, seed=1)
  b = sampler.sample(params, PROMPTS, 10, seed=2)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  model = params_lib.merge(graphdef, params)
  from helpers.reference import full_logits
  for i, prompt in enumerate(PROMPTS):
    seq = prompt + a.sequences(i)
    logits = full_logits(graphdef, params, seq)
    steps = np.arange(len(prompt) - 1, len(seq) - 1)
    np.testing.assert_array_equal(logits[steps].argmax(-1), a.sequences(i))
    logp = jax.nn.log_softmax(logits, -1)[steps, seq[len(prompt):]]
    np.testing.assert_allclose(a.logprobs[i, 0, :a.lengths[i, 0]], logp, atol=1e-4)
  del model


def test_remainder_batch_returns_every_prompt(setup):
  cfg, graphdef, params, mesh = setup
  sampler = Sampler(cfg, graphdef, mesh, batch_size=4)  # 5 prompts x n=3 = 15 rows: 4 batches
  out = sampler.sample(params, PROMPTS, 5, SamplingParams(temperature=1.0), n=3)
  assert out.tokens.shape == (5, 3, 5)
  assert (out.lengths == 5).all()
  greedy = sampler.sample(params, PROMPTS, 5, n=3)
  for i in range(len(PROMPTS)):  # greedy: all n samples of a prompt are equal, and all present
    assert (greedy.tokens[i] == greedy.tokens[i, 0]).all()


def test_early_exit_when_every_row_hits_an_end_token(setup):
  cfg, graphdef, params, mesh = setup
  free = Sampler(cfg, graphdef, mesh, batch_size=8).sample(params, PROMPTS, 32)
  assert free.decode_steps == 31  # no end tokens: runs to max_new_tokens
  # End on whatever each row's third greedy token is: every row finishes by step 3.
  ends = tuple(int(free.tokens[i, 0, 2]) for i in range(len(PROMPTS)))
  sampler = Sampler(cfg, graphdef, mesh, end_ids=ends, batch_size=8)
  out = sampler.sample(params, PROMPTS, 32)
  assert out.decode_steps <= 2  # prefill makes token 0; two loop steps make tokens 1 and 2
  assert out.finished.all()
  for i in range(len(PROMPTS)):
    seq = out.sequences(i)
    assert seq[-1] in ends and len(seq) <= 3
    assert (out.tokens[i, 0, len(seq):] == 0).all()


def test_top_k_one_equals_greedy_and_top_p_tiny_equals_greedy(setup):
  cfg, graphdef, params, mesh = setup
  sampler = Sampler(cfg, graphdef, mesh, batch_size=8)
  greedy = sampler.sample(params, PROMPTS, 8)
  k1 = sampler.sample(params, PROMPTS, 8, SamplingParams(temperature=1.0, top_k=1), seed=4)
  p0 = sampler.sample(params, PROMPTS, 8, SamplingParams(temperature=1.0, top_p=1e-6), seed=4)
  np.testing.assert_array_equal(k1.tokens, greedy.tokens)
  np.testing.assert_array_equal(p0.tokens, greedy.tokens)


def test_top_k_restricts_support():
  logits = jax.numpy.asarray(np.random.default_rng(0).normal(size=(1, 50)), np.float32)
  logits = jax.numpy.repeat(logits, 256, axis=0)
  keys = jax.random.split(jax.random.key(0), 256)
  top3 = set(np.argsort(-np.asarray(logits[0]))[:3].tolist())
  picked = pick_tokens(logits, keys, 0, SamplingParams(temperature=2.0, top_k=3))
  assert set(np.asarray(picked).tolist()) == top3


def test_stop_strings_cut_at_the_completing_token(setup):
  cfg, graphdef, params, mesh = setup
  decode = lambda ids: "".join(chr(65 + i % 26) for i in ids)
  sampler = Sampler(cfg, graphdef, mesh, batch_size=8, stop_check_every=4)
  free = sampler.sample(params, PROMPTS, 16)
  text0 = decode(free.sequences(0))
  stop = text0[5:7]  # a string the first row produces at tokens 5-6
  out = sampler.sample(params, PROMPTS, 16, stop_strings=(stop,), decode_fn=decode)
  assert decode(out.sequences(0)).endswith(stop) and stop not in decode(out.sequences(0))[:-1]
  assert out.finished[0, 0]
  for i in range(len(PROMPTS)):  # each row is its free-running prefix, cut or whole
    assert free.sequences(i)[:out.lengths[i, 0]] == out.sequences(i)
    assert out.finished[i, 0] == (stop in decode(free.sequences(i)))


def test_stop_sequences_end_rows_on_the_device(setup):
  cfg, graphdef, params, mesh = setup
  decode = lambda ids: "".join(chr(0x100 + i) for i in ids)  # one character per id
  free = Sampler(cfg, graphdef, mesh, batch_size=8).sample(params, PROMPTS, 16)
  seq = free.sequences(0)[5:7]
  stop = decode(seq)
  host = Sampler(cfg, graphdef, mesh, batch_size=8, stop_check_every=32)
  dev = Sampler(cfg, graphdef, mesh, batch_size=8, stop_check_every=32, stop_sequences=[seq])
  a = host.sample(params, PROMPTS, 16, stop_strings=(stop,), decode_fn=decode)
  b = dev.sample(params, PROMPTS, 16, stop_strings=(stop,), decode_fn=decode)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_array_equal(a.finished, b.finished)
  assert b.finished[0, 0] and b.lengths[0, 0] <= 7
  # Alone, the stopping row ends the loop on the device instead of at the host's next check.
  one_host = host.sample(params, PROMPTS[:1], 16, stop_strings=(stop,), decode_fn=decode)
  one_dev = dev.sample(params, PROMPTS[:1], 16, stop_strings=(stop,), decode_fn=decode)
  assert one_host.decode_steps == 15
  assert one_dev.decode_steps == one_dev.lengths[0, 0] - 1
  with pytest.raises(ValueError, match="empty sequence"):
    Sampler(cfg, graphdef, mesh, stop_sequences=[[]])


def test_bad_requests_get_clear_errors(setup):
  cfg, graphdef, params, mesh = setup
  sampler = Sampler(cfg, graphdef, mesh)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    sampler.sample(params, [[1], []], 4)
  with pytest.raises(ValueError, match="max_seq_len"):
    sampler.sample(params, [[1] * 250], 10)
  with pytest.raises(ValueError, match="decode_fn"):
    sampler.sample(params, [[1]], 4, stop_strings=("x",))
  with pytest.raises(ValueError, match="top_p"):
    SamplingParams(temperature=1.0, top_p=0.0)


def test_chunked_sampling_equals_sampling_at_once(setup):
  """Resumed phases sample in shards; ``first_index`` keeps every prompt's randomness."""
  cfg, graphdef, params, mesh = setup
  sampler = Sampler(cfg, graphdef, mesh, batch_size=4)
  hot = SamplingParams(temperature=1.0)
  whole = sampler.sample(params, PROMPTS, 6, hot, n=2, seed=5)
  head = sampler.sample(params, PROMPTS[:2], 6, hot, n=2, seed=5)
  tail = sampler.sample(params, PROMPTS[2:], 6, hot, n=2, seed=5, first_index=2)
  np.testing.assert_array_equal(np.concatenate([head.tokens, tail.tokens]), whole.tokens)


EIGHT = PROMPTS + [[20, 21], [30, 31, 32], [40]]
# The tiny model's first greedy tokens of EIGHT's prompts 0-5, none of which prompts 6 and 7
# write in their first 24 tokens: six rows end at once, two run on.
EARLY_ENDS = (111, 130, 87, 182, 162, 225)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2)], ids=["one_device", "sharded"])
def test_a_mostly_done_batch_decodes_on_compacted_with_the_same_samples(shape):
  mesh = mesh_of(shape)
  cfg = get_preset("tiny")
  graphdef, params = params_lib.init_params(cfg, mesh, seed=0)
  kw = dict(end_ids=EARLY_ENDS, batch_size=8, stop_check_every=4)
  compact = Sampler(cfg, graphdef, mesh, **kw)
  wide = Sampler(cfg, graphdef, mesh, compact_rows=False, **kw)
  a, b = (s.sample(params, EIGHT, 24) for s in (compact, wide))
  assert a.lengths[:6, 0].max() <= 2 and a.lengths[6:, 0].min() == 24  # the ends did as meant
  for name in ("tokens", "lengths", "finished"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  assert a.decode_steps == b.decode_steps == 23
  # After the first check (4 steps) the two rows still going decode as a batch of the
  # smallest width the mesh allows, not 8.
  width = 2 if shape == (1, 1, 1) else 4  # (2,2,2): 4 batch shards
  assert b.decode_row_steps == 8 * 23 and a.decode_row_steps == 8 * 4 + width * 19
  hot = SamplingParams(temperature=0.8)
  a, b = (s.sample(params, EIGHT, 24, hot, n=2, seed=5) for s in (compact, wide))
  for name in ("tokens", "lengths", "finished"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


@pytest.mark.parametrize("compact_rows", [True, False])
def test_a_limit_per_prompt_cuts_each_row_there_and_ends_a_batch_early(setup, compact_rows):
  """A row's tokens up to its own limit are those of one limit for all; a row cut there is
  not finished; a batch whose limits are short stops at them, not at the longest."""
  cfg, graphdef, params, mesh = setup
  sampler = Sampler(cfg, graphdef, mesh, batch_size=8, stop_check_every=4,
                    compact_rows=compact_rows)
  hot = SamplingParams(temperature=1.0)
  free = sampler.sample(params, EIGHT, 40, hot, n=2, seed=3)
  limits = [5, 40, 9, 1, 12, 3, 7, 20]
  out = sampler.sample(params, EIGHT, limits, hot, n=2, seed=3)
  assert out.tokens.shape == free.tokens.shape
  for i, limit in enumerate(limits):
    for j in range(2):
      assert out.sequences(i, j) == free.sequences(i, j)[:limit]
      assert out.finished[i, j] == (free.finished[i, j] and free.lengths[i, j] <= limit)
  np.testing.assert_array_equal(out.lengths, np.minimum(free.lengths, np.asarray(limits)[:, None]))
  short = sampler.sample(params, EIGHT, [3] * 7 + [40], hot, n=2, seed=3)
  assert short.sequences(7, 0) == free.sequences(7, 0)
  alone = sampler.sample(params, EIGHT[:7], [3] * 7, hot, n=2, seed=3)
  # Two batches of 4 prompts x 2 samples each: to 40 tokens, to 3 (not to the next check).
  assert free.decode_steps == 2 * 39 and alone.decode_steps == 2 * 2
  np.testing.assert_array_equal(alone.tokens[:, :, :3], free.tokens[:7, :, :3])
  with pytest.raises(ValueError, match="one per prompt"):
    sampler.sample(params, EIGHT, [4, 4])
  with pytest.raises(ValueError, match=">= 1"):
    sampler.sample(params, EIGHT, [0] + [4] * 7)
