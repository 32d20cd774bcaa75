"""The "tensor" sampling layout: the same samples as the trainer's layout, weights resharded
onto tensor parallelism, and decode steps that no longer gather the weights."""

import numpy as np
import pytest
from jax.sharding import PartitionSpec

from star_jax.engine import memory as planning, params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.sampling import Sampler, SamplingParams
from star_jax.sampling.sampler_memory import plan_sampler

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], [11, 12], [13, 14, 15, 16, 17]]


def test_tensor_layout_draws_the_train_layouts_samples(mesh8):
  # Scanned layers, the layout "tensor" is meant for (a loop of layers shards its kernels alike).
  cfg = get_preset("tiny", scan_layers=True)
  graphdef, params = params_lib.init_params(cfg, mesh8, seed=0)
  train = Sampler(cfg, graphdef, mesh8, batch_size=8, stop_check_every=4)
  tensor = Sampler(cfg, graphdef, mesh8, batch_size=8, stop_check_every=4, layout="tensor")
  for sp, n in ((SamplingParams(), 1), (SamplingParams(temperature=0.9), 2)):
    a = train.sample(params, PROMPTS, 12, sp, n=n, seed=3)
    b = tensor.sample(params, PROMPTS, 12, sp, n=n, seed=3)
    np.testing.assert_array_equal(b.tokens, a.tokens)
    np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-5)
  q = tensor.place(params)["layers"]["attn"]["q"]
  # The layers whole, heads over tensor x fsdp, the model width whole: no kernel is split
  # along embed.
  assert q[...].sharding.spec == PartitionSpec(None, None, ("tensor", "fsdp"), None)
  # The caller's params are untouched (FSDP over embed).
  assert params["layers"]["attn"]["q"][...].sharding.spec[1] == "fsdp"


def test_tensor_layout_decodes_without_a_gathered_copy_of_the_weights(mesh8):
  cfg = get_preset("tiny", d_model=256, ffn_dim=1024, num_heads=8, num_kv_heads=4, head_dim=32)
  graphdef, params = planning.abstract_params(cfg, mesh8)
  held = planning.tree_bytes(params)  # one device's shard of the weights
  decode = {}
  for layout in ("train", "tensor"):
    sampler = Sampler(cfg, graphdef, mesh8, batch_size=8, layout=layout)
    decode[layout] = plan_sampler(sampler, params, prompt_len=16, max_new_tokens=16)[1]
  # FSDP: XLA gathers the kernels over fsdp once per decode call (hoisted out of the step
  # loop), so every device holds them gathered: received bytes and temporaries of that size.
  assert decode["train"].collectives["once"] > held
  assert decode["train"].need["temporaries"] > held
  # Tensor parallelism: at most the embedding table is gathered (for the token lookup), the
  # steps move activations only, and the temporaries are a fraction of the weights.
  table = cfg.vocab_size * cfg.d_model * 4
  assert decode["tensor"].collectives["once"] <= table
  assert decode["tensor"].collectives["per loop iteration"] < held / 20
  assert decode["tensor"].need["temporaries"] < decode["train"].need["temporaries"] / 5
  with pytest.raises(ValueError, match="sampling layout"):
    Sampler(cfg, graphdef, mesh8, layout="pipeline")
