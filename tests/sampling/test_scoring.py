"""Continuation log-likelihoods equal the full forward's, whatever the batching."""

import jax
import numpy as np
import pytest

from conftest import mesh_of
from helpers.reference import full_logits
from star_jax.engine import params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.sampling.scoring import continuation_logprobs


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2)])
def test_scores_are_the_forward_log_probabilities(shape):
  mesh = mesh_of(shape)
  cfg = get_preset("tiny")
  graphdef, params = params_lib.init_params(cfg, mesh, seed=1)
  rng = np.random.default_rng(0)
  contexts = [rng.integers(3, 250, n).tolist() for n in (5, 12, 1, 30, 7)]
  conts = [rng.integers(3, 250, n).tolist() for n in (1, 3, 6, 2, 4)]
  got = continuation_logprobs(graphdef, mesh, params, contexts, conts, batch_size=4)
  for c, x, g in zip(contexts, conts, got):
    logp = jax.nn.log_softmax(full_logits(graphdef, params, c + x), axis=-1)
    ref = sum(float(logp[len(c) - 1 + i, t]) for i, t in enumerate(x))
    assert g == pytest.approx(ref, abs=1e-4)
  with pytest.raises(ValueError, match="at least one token"):
    continuation_logprobs(graphdef, mesh, params, [[1]], [[]])
