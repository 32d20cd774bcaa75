"""Engine throughput benchmark: greedy decode (Sampler.sample) and train steps (Trainer.step).

  python -m benchmarks.engine --model=25m --decode_batch=32 --train_batch=16
  python -m benchmarks.engine --model=smollm2-135m --scan_layers [--remat]

Prints exactly one JSON line to stdout (progress goes to stderr through absl
logging). Compile time is reported apart from the steady-state figures: the
first call of each case compiles and runs, the timed calls after it only run.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time

import flax
import jax
import numpy as np
from absl import app, flags, logging

from benchmarks.common import command, cores, cpu_model
from star_jax.engine import batching, model_config as config, params as params_lib, sharding
from star_jax.engine.trainer import OptimConfig, Trainer
from star_jax.sampling.sampler import Sampler, SamplingParams

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "25m", "model preset (config.PRESETS)")
flags.DEFINE_list("cases", ["decode", "train"], "which cases to run: decode, train")
flags.DEFINE_integer("decode_batch", 32, "sampler batch size (rows decoded together)")
flags.DEFINE_integer("prompt_len", 64, "tokens per random prompt")
flags.DEFINE_integer("new_tokens", 64, "new tokens per row (no early stop)")
flags.DEFINE_integer("decode_iters", 3, "timed sample calls after the compiling one (>= 2)")
flags.DEFINE_integer("train_batch", 16, "rows per micro-batch")
flags.DEFINE_integer("seq_len", 256, "tokens per training row")
flags.DEFINE_integer("grad_accum", 1, "micro-batches per step")
flags.DEFINE_integer("steps", 5, "timed train steps after the compiling one")
flags.DEFINE_list("mesh", ["-1", "1", "1"], "mesh sizes for (data, fsdp, tensor); one may be -1")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "compute dtype")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16", "float16"], "param dtype")
flags.DEFINE_float("peak_flops", None, "peak FLOP/s of one device, for MFU (GPU/TPU only)")
flags.DEFINE_integer("seed", 0, "seed for parameters and random data")
flags.DEFINE_bool("scan_layers", False, "layers through one jax.lax.scan (ModelConfig.scan_layers)")
flags.DEFINE_bool("remat", False, "rematerialise each block in the backward pass")
flags.DEFINE_string("remat_policy", "nothing_saveable", "jax.checkpoint_policies name (with remat)")


def bench_decode(cfg, graphdef, params, mesh, rng) -> dict:
  B, P, N = FLAGS.decode_batch, FLAGS.prompt_len, FLAGS.new_tokens
  sampler = Sampler(cfg, graphdef, mesh, end_ids=(), batch_size=B)
  prompts = rng.integers(1, cfg.vocab_size, size=(B, P)).tolist()
  greedy = SamplingParams(temperature=0.0)

  def call(n):
    t0 = time.perf_counter()
    out = sampler.sample(params, prompts, max_new_tokens=n, sampling=greedy)
    dt = time.perf_counter() - t0
    if not (out.lengths == n).all():
      raise RuntimeError(f"expected {n} new tokens per row, got lengths {np.unique(out.lengths)}")
    return dt

  def timed(n, what):
    logging.info("decode: compiling %s (batch %d, prompt %d, new %d)", what, B, P, n)
    first, times = call(n), []
    for i in range(max(2, FLAGS.decode_iters)):
      times.append(call(n))
      logging.info("decode: %s call %d took %.3f s", what, i, times[-1])
    return first, times

  first, times = timed(N, "sample")
  best, median = min(times), statistics.median(times)
  # Prefill alone: a 1-token sample is prefill plus an empty decode loop (its cache is
  # P + 16 slots rather than P + N, a different compile of nearly the same cost).
  _, pre_times = timed(1, "prefill")
  prefill = min(pre_times)
  loop = max(best - prefill, 1e-9)
  new_tokens = B * N
  # Forward FLOPs per token ~ 2 x matmul params (attention ignored), prompt tokens included.
  fwd_flops = cfg.flops_per_token(0) / 3
  return {
      "batch": B, "prompt_len": P, "new_tokens": N, "timed_calls": len(times),
      "first_call_s": first, "compile_s": max(first - median, 0.0),
      "best_s": best, "median_s": median,
      "tokens_per_s": new_tokens / best, "tokens_per_s_median": new_tokens / median,
      # Whole call / N: prefill + (N - 1) decode steps, per generated position.
      "step_ms": 1e3 * best / N, "step_ms_median": 1e3 * median / N,
      "prefill_s": prefill,
      "decode_step_ms": 1e3 * loop / (N - 1) if N > 1 else None,
      "decode_only_tokens_per_s": B * (N - 1) / loop if N > 1 else None,
      "approx_flops_per_s": fwd_flops * B * (P + N - 1) / best,
  }


def bench_train(cfg, graphdef, params, mesh, rng) -> dict:
  M, B, L = FLAGS.grad_accum, FLAGS.train_batch, FLAGS.seq_len
  # One prompt token + L completion tokens fill one row exactly: loss mask 1, one segment.
  examples = [batching.TrainExample(prompt=[int(rng.integers(1, cfg.vocab_size))],
                                    completion=rng.integers(1, cfg.vocab_size, L).tolist())
              for _ in range(M * B)]
  packed = batching.pack(examples, L)
  assert packed.batch["tokens"].shape == (M * B, L), packed.batch["tokens"].shape
  trainer = Trainer(graphdef, mesh, OptimConfig(learning_rate=1e-4, warmup_steps=0,
                                                weight_decay=0.01))
  shape = (M, B, L)
  batch = {k: jax.device_put(v.reshape(shape), trainer.batch_sharding(shape))
           for k, v in packed.batch.items()}
  state = trainer.init(params)
  tokens = M * B * L
  logging.info("train: compiling (micro-batches %d, batch %d, seq %d)", M, B, L)
  t0 = time.perf_counter()
  state, metrics = trainer.step(state, batch)
  jax.block_until_ready(state)
  first = time.perf_counter() - t0
  logging.info("train: first step %.3f s, loss %.4f", first, float(metrics["loss"]))
  times = []
  t_all = time.perf_counter()
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
    logging.info("train: step %.3f s, loss %.4f", times[-1], float(metrics["loss"]))
  total = time.perf_counter() - t_all
  median = statistics.median(times)
  tokens_per_s = tokens * FLAGS.steps / total
  flops_per_token = cfg.flops_per_token(L)
  flops_per_s = flops_per_token * tokens_per_s
  accel = jax.devices()[0].platform in ("gpu", "tpu")
  mfu = (flops_per_s / (FLAGS.peak_flops * len(jax.devices()))
         if accel and FLAGS.peak_flops else None)
  return {
      "grad_accum": M, "batch": B, "seq_len": L, "tokens_per_step": tokens,
      "timed_steps": FLAGS.steps, "first_step_s": first,
      "compile_s": max(first - median, 0.0), "step_s_median": median,
      "step_s_best": min(times), "tokens_per_s": tokens_per_s,
      "flops_per_token": flops_per_token, "flops_per_s": flops_per_s,
      "peak_flops": FLAGS.peak_flops, "mfu": mfu, "final_loss": float(metrics["loss"]),
  }


def main(argv):
  del argv
  t_start = time.perf_counter()
  unknown = set(FLAGS.cases) - {"decode", "train"}
  if unknown:
    raise app.UsageError(f"unknown cases {sorted(unknown)}")
  if FLAGS.steps < 1:
    raise app.UsageError("--steps must be >= 1")
  cfg = config.get_preset(FLAGS.model, dtype=FLAGS.dtype, param_dtype=FLAGS.param_dtype,
                          scan_layers=FLAGS.scan_layers, remat=FLAGS.remat,
                          remat_policy=FLAGS.remat_policy)
  mesh = sharding.make_mesh([int(s) for s in FLAGS.mesh])
  devices = jax.devices()
  logging.info("model %s (%d params), mesh %s, %d %s device(s)", FLAGS.model,
               cfg.num_params(), sharding.describe(mesh), len(devices), devices[0].platform)
  t0 = time.perf_counter()
  graphdef, params = params_lib.init_params(cfg, mesh, seed=FLAGS.seed)
  jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(FLAGS.seed)
  result = {
      "benchmark": "star_jax.engine", "cases": list(FLAGS.cases), "model": FLAGS.model,
      "num_params": cfg.num_params(), "dtype": FLAGS.dtype, "param_dtype": FLAGS.param_dtype,
      "mesh": dict(mesh.shape), "scan_layers": cfg.scan_layers, "remat": cfg.remat,
      "remat_policy": cfg.remat_policy,
      "devices": {"count": len(devices), "platform": devices[0].platform,
                  "kind": devices[0].device_kind},
      "jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version(),
      "cpu": {"model": cpu_model(), "cores": cores()},
      "command": command("benchmarks.engine"),
      "init_s": init_s,
  }
  # Decode first: train steps donate (and replace) the parameter arrays.
  if "decode" in FLAGS.cases:
    result["decode"] = bench_decode(cfg, graphdef, params, mesh, rng)
  if "train" in FLAGS.cases:
    result["train"] = bench_train(cfg, graphdef, params, mesh, rng)
  result["wall_s"] = time.perf_counter() - t_start
  sys.stdout.write(json.dumps(result) + "\n")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
