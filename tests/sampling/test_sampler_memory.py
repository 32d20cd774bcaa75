"""The sampler's plan: its prefill's and decode step's cost, from loop-free compiles."""

import pytest

from star_jax.engine import memory as planning
from star_jax.engine.model_config import get_preset
from star_jax.sampling import Sampler
from star_jax.sampling.sampler_memory import plan_sampler


def test_the_samplers_cost_fitted_through_1_and_2_layers_matches_the_unrolled_compile(mesh8):
  """Scanned layers count one layer, so the cost comes from a compile with the layers
  unrolled; with ``cost_layers`` it is fitted as a + b x layers through 1- and 2-layer copies
  (an 8B model's unrolled sampler would take the host's memory) and must agree with it."""
  cfg = get_preset("tiny", scan_layers=True, num_layers=6, vocab_size=256, max_seq_len=128)
  graphdef, params = planning.abstract_params(cfg, mesh8)
  sampler = Sampler(cfg, graphdef, mesh8, batch_size=8, layout="tensor")
  direct = plan_sampler(sampler, params, prompt_len=24, max_new_tokens=16, cost=True)
  fitted = plan_sampler(sampler, params, prompt_len=24, max_new_tokens=16, cost=True,
                        cost_layers=True)
  for d, f in zip(direct, fitted):
    assert d.cost_unit == f.cost_unit and d.cost_unit in ("prefill", "decode step")
    assert d.cost_note == ""
    assert f.cost_note == "extrapolated from loop-free compiles of 1 and 2 layers"
    assert f.cost["flops"] == pytest.approx(d.cost["flops"], rel=0.01)
    assert f.cost["bytes accessed"] == pytest.approx(d.cost["bytes accessed"], rel=0.05)
    assert f.need == d.need  # the memory is the run's own (scanned) program's either way
  # A decode step does at least the layers' 2 N FLOPs a row (one layer counted: a sixth).
  weights = cfg.num_params(include_embedding=False)
  assert fitted[1].cost["flops"] >= 2 * weights * sampler.batch_size / 8
  # Layers of two kinds (Gemma's local and global) are not fitted: the unrolled compile.
  mixed = cfg.replace(layer_types=("sliding_attention", "full_attention") * 3, sliding_window=8)
  graphdef, params = planning.abstract_params(mixed, mesh8)
  sampler = Sampler(mixed, graphdef, mesh8, batch_size=8, layout="tensor")
  plans = plan_sampler(sampler, params, prompt_len=24, max_new_tokens=16, cost=True,
                       cost_layers=True)
  assert all(p.cost["flops"] > 0 and p.cost_note == "" for p in plans)
