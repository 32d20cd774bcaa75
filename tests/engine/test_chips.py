"""The TPU chip table, topology names, the roofline arithmetic, and the platform a program is
traced for (a TPU plan made on a CPU host takes the TPU's code paths)."""

import pytest

from star_jax.engine import chips
from star_jax.engine.attention import attention_path
from star_jax.engine.model_config import get_preset
from star_jax.runtime.compiling import compiling_for, target_platform


def test_every_chip_figure_names_its_published_source():
  for name, chip in chips.CHIPS.items():
    assert chip.source == f"https://cloud.google.com/tpu/docs/{name}"
    assert chip.hbm_gib > 0 and chip.peak_bf16_flops > 1e14 and chip.hbm_bytes_per_s > 5e11


def test_topology_and_slice_names():
  assert chips.parse_topology("v5e:2x4")[1:] == ("v5e:2x4", 8)
  assert chips.parse_topology("v4-8")[1:] == ("v4:2x2x1", 4)  # v4 slices count TensorCores
  assert chips.parse_topology("v4-128")[1:] == ("v4:4x4x4", 64)
  assert chips.parse_topology("v5p-8")[0].name == "v5p"
  with pytest.raises(ValueError, match="unknown TPU topology 'v9:2x2'"):
    chips.parse_topology("v9:2x2")


def test_the_roofline_is_the_slower_of_compute_and_memory():
  v5e = chips.CHIPS["v5e"]  # 197 TFLOP/s, 819 GB/s
  assert chips.roofline_seconds(197e12, 0, v5e) == pytest.approx(1.0)
  assert chips.roofline_seconds(197e12, 1638e9, v5e) == pytest.approx(2.0)
  assert chips.bound(197e12, 1638e9, v5e) == "memory bandwidth"
  assert chips.bound(394e12, 819e9, v5e) == "compute"


def test_speeds_of_a_hand_computed_train_step_and_decode_step():
  v4 = chips.CHIPS["v4"]  # 275 TFLOP/s, 1200 GB/s
  cfg = get_preset("tiny")
  # One micro-batch: 2.75e12 FLOPs (10 ms at peak), 6 GB (5 ms): compute-bound, 10 ms.
  train = {"what": "train step (4 micro-batches of 2 x 128 tokens)", "cost_unit": "micro-batch",
           "cost": {"flops": 2.75e12, "bytes accessed": 6e9}}
  s = chips.speeds(train, v4, cfg, devices=4, train_shape=(4, 2, 128), rows=16, prompt_len=32,
                   samples=1)
  assert s["unit_seconds"] == pytest.approx(0.01) and s["bound"] == "compute"
  assert s["compute_seconds"] == pytest.approx(0.01)
  assert s["step_seconds"] == pytest.approx(0.04)  # 4 micro-batches
  assert s["tokens_per_s"] == pytest.approx(4 * 2 * 128 / 0.04)
  assert s["mfu_bound"] == pytest.approx(cfg.flops_per_token(128) * 1024 / (0.04 * 4 * 275e12))
  # 4 devices x 4 micro-batches x 2.75 TFLOP against the model's FLOPs for 1,024 tokens
  assert s["compiler_over_model_flops"] == pytest.approx(16 * 2.75e12
                                                         / (cfg.flops_per_token(128) * 1024))
  # One decode step of 16 rows reading 12 GB: memory-bound, 10 ms, 1,600 tokens/s.
  decode = {"what": "sampler decode loop (...)", "cost_unit": "decode step",
            "cost": {"flops": 1e9, "bytes accessed": 12e9}}
  s = chips.speeds(decode, v4, cfg, devices=1, train_shape=(1, 1, 1), rows=16, prompt_len=32,
                   samples=1)
  assert s["bound"] == "memory bandwidth" and s["tokens_per_s"] == pytest.approx(1600)
  # XLA counting 36 GB for a step whose arguments (parameters and cache) are 6 GiB: the bound
  # reads the arguments once, 6 GiB / 1,200 GB/s.
  decode.update(arguments=6.0, cost={"flops": 1e9, "bytes accessed": 36e9})
  s = chips.speeds(decode, v4, cfg, devices=1, train_shape=(1, 1, 1), rows=16, prompt_len=32,
                   samples=1)
  assert s["unit_seconds"] == pytest.approx(6 * 2**30 / 1200e9) and s["bytes"] == 6 * 2**30
  # A prefill of 4 prompts (16 rows, 4 samples each) of 32 tokens: the LM head runs once a
  # prompt, so its model FLOPs are 2 (N - V D) a token + 2 V D a prompt (not 2 N a token,
  # which put Llama-3.2-1B's prefill on v5p-8 at "MFU <= 119%").
  prefill = {"what": "sampler prefill (...)", "cost_unit": "prefill",
             "cost": {"flops": 2.75e12, "bytes accessed": 1e9}}
  s = chips.speeds(prefill, v4, cfg, devices=1, train_shape=(1, 1, 1), rows=16, prompt_len=32,
                   samples=4)
  head = cfg.vocab_size * cfg.d_model
  n = cfg.num_params(include_embedding=False) + (head if cfg.tie_embeddings else 0)
  assert s["unit_seconds"] == pytest.approx(0.01) and s["tokens_per_s"] == pytest.approx(12800)
  assert s["mfu_bound"] == pytest.approx((2 * (n - head) * 128 + 2 * head * 4) / (0.01 * 275e12))
  # Scanned layers: the compiler counts one layer, so no roofline is claimed.
  assert "note" in chips.speeds({"what": "x", "cost_unit": "", "cost": {"flops": 1.0}}, v4, cfg,
                                1, (1, 1, 1), 1, 1, 1)


def test_a_plan_for_a_tpu_traces_the_tpu_attention_paths():
  assert target_platform() == "cpu"
  assert attention_path("auto", 64) == "einsum" and attention_path("auto", 1) == "einsum_cpu"
  with compiling_for("tpu"):
    assert target_platform() == "tpu"
    assert attention_path("auto", 64) == "dot_product"  # the fused kernel
    assert attention_path("auto", 1) == "einsum"  # a decode step: not XLA:CPU's form
    assert attention_path("auto", 64, softcap=50.0) == "einsum"
  assert target_platform() == "cpu"
