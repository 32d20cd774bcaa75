r"""Training throughput: one AdamW step of star_jax's Trainer against transformers + torch.

  python -m benchmarks.train --batch_sizes=4,8 --seq_len=256 [--markdown]

Both sides start from the same float32 weights (default SmolLM2-135M-Instruct;
``--checkpoint`` also takes a Hugging Face directory) and train on the same
random token rows: inputs ``seq[:, :L]``, targets ``seq[:, 1:]``, mean
cross-entropy over all ``batch x seq_len`` tokens. One step is forward,
backward, global-norm clipping and AdamW (same learning rate, betas, epsilon and
weight decay; decay on matrices only, as star_jax's optimizer does); torch does
``model.train()``, ``loss.backward()``, ``clip_grad_norm_``, ``AdamW.step()``,
``zero_grad()``.

Prints one JSON line per batch size (see ``benchmarks.common``):
``star_jax`` and ``transformers`` are trained tokens per second over ``--steps``
timed steps after a first one that compiles (jax) or warms up (torch);
``*_detail.flops_per_s`` is ``ModelConfig.flops_per_token(seq_len)`` times that,
``fraction_of_peak`` relative to the best float32 matmul rate measured in the same
run (``matmul_peak_flops``: jax, numpy and torch), ``mfu`` relative to
``--peak_flops`` when given. ``first_step_loss`` holds both first-step losses
(same weights and data, so they agree to float32 rounding).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks import common, records
from benchmarks.decode import DEFAULT_CHECKPOINT, load_transformers

MODULE = "benchmarks.train"
LOSS_RTOL = 1e-4


def make_rows(vocab_size: int, batch: int, seq_len: int, seed: int) -> np.ndarray:
  """``[batch, seq_len + 1]`` random token ids (ids >= 1)."""
  return np.random.default_rng(seed).integers(1, vocab_size, (batch, seq_len + 1)).astype(np.int32)


def _jax_batch(rows: np.ndarray) -> dict[str, np.ndarray]:
  """Trainer arrays ``[1, B, L]``: one segment per row, loss on every token."""
  B, L = rows.shape[0], rows.shape[1] - 1
  batch = {
      "tokens": rows[:, :-1], "targets": rows[:, 1:],
      "loss_mask": np.ones((B, L), np.float32), "segment_ids": np.ones((B, L), np.int32),
      "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)),
  }
  return {k: np.ascontiguousarray(v)[None] for k, v in batch.items()}


def _summary(t: common.Timing, tokens: int, flops_per_token: float, peak: float | None,
             given_peak: float | None, first_loss: float) -> dict[str, Any]:
  d = t.as_dict()
  d["tokens_per_s"] = tokens / t.median
  d["tokens_per_s_best"] = tokens / t.best
  d["flops_per_s"] = flops_per_token * d["tokens_per_s"]
  d["fraction_of_peak"] = d["flops_per_s"] / peak if peak else None
  d["mfu"] = d["flops_per_s"] / given_peak if given_peak else None
  d["first_step_loss"] = first_loss
  return d


def run(checkpoint: str = DEFAULT_CHECKPOINT, batch_sizes: Sequence[int] = (4, 8),
        seq_len: int = 256, steps: int = 3, learning_rate: float = 1e-4, b1: float = 0.9,
        b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01, clip_norm: float = 1.0,
        matmul_n: int | None = None, matmul_repeats: int = 5, peak_flops: float | None = None,
        device: str = "auto", mesh_shape: Sequence[int] = (1, 1, 1),
        matmul_precision: str = "highest", peers: bool = True, seed: int = 0,
        markdown: bool = False, cmd: str | None = None) -> list[dict[str, Any]]:
  """Runs every batch size; prints and returns one record per case."""
  from star_jax.engine.params import shardings_of
  from star_jax.engine.trainer import OptimConfig, Trainer
  from star_jax.hub import load_pretrained

  batch_sizes = common.parse_int_list(batch_sizes)
  if steps < 1 or seq_len < 2:
    raise ValueError("steps must be >= 1 and seq_len >= 2")
  cmd = cmd if cmd is not None else common.command(MODULE)
  devices, mesh, torch_device = common.setup_run(device, mesh_shape, matmul_precision, peers)
  accel = devices[0].platform != "cpu"

  n = matmul_n or (8192 if accel else 2048)
  logging.info("measuring float32 matmul peak (%d^3)", n)
  peak = common.matmul_peak(n, devices[0], torch_device if peers else None, matmul_repeats)
  logging.info("matmul peak: %s", {k: f"{peak[k] / 1e9:.1f} GFLOP/s"
                                   for k in ("jax", "numpy", "torch") if k in peak})

  t0 = time.perf_counter()
  pre = load_pretrained(checkpoint, mesh, dtype="float32")
  cfg = pre.model_cfg
  if seq_len > cfg.max_seq_len:
    raise ValueError(f"seq_len {seq_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
  # Host copy of the weights: every case starts from them (train steps donate the arrays).
  graphdef = pre.graphdef
  host_params = jax.tree.map(np.asarray, pre.params)
  param_shardings = shardings_of(pre.params)
  del pre
  logging.info("star_jax: loaded %s in %.1f s (%d params)", checkpoint,
               time.perf_counter() - t0, cfg.num_params())
  model = initial_state = None
  if peers:
    import torch
    t0 = time.perf_counter()
    model = load_transformers(checkpoint, torch_device)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logging.info("transformers: loaded %s in %.1f s", checkpoint, time.perf_counter() - t0)
  machine = common.machine_info(devices, torch_device if peers else None)
  peer = (f"transformers {machine['transformers']} + torch {machine['torch']} AdamW "
          f"({torch_device})") if peers else None
  optim = OptimConfig(learning_rate=learning_rate, warmup_steps=0, b1=b1, b2=b2, eps=eps,
                      weight_decay=weight_decay, clip_norm=clip_norm)
  flops_per_token = cfg.flops_per_token(seq_len)

  results = []
  for B in batch_sizes:
    rows = make_rows(cfg.vocab_size, B, seq_len, seed + B)
    tokens = B * seq_len

    # star_jax
    trainer = Trainer(graphdef, mesh, optim)
    params = jax.device_put(host_params, param_shardings)
    holder = {"state": trainer.init(params)}
    del params
    shape = (1, B, seq_len)
    batch = {k: jax.device_put(v, trainer.batch_sharding(shape))
             for k, v in _jax_batch(rows).items()}
    losses = []

    def jax_step():
      holder["state"], metrics = trainer.step(holder["state"], batch)
      losses.append(float(metrics["loss"]))  # waits for the step
      jax.block_until_ready(holder["state"])
    ours_t = common.time_calls(jax_step, steps, f"star_jax batch {B}", logging.info)
    ours = _summary(ours_t, tokens, flops_per_token, peak["best"], peak_flops if accel else None,
                    losses[0])
    del holder, batch
    common.free_memory()

    theirs = None
    if peers:
      import torch
      model.load_state_dict(initial_state)
      model.train()
      decay = [p for p in model.parameters() if p.ndim > 1]
      no_decay = [p for p in model.parameters() if p.ndim <= 1]
      opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=learning_rate, betas=(b1, b2), eps=eps)
      seq = torch.tensor(rows, dtype=torch.long, device=torch_device)
      inputs, targets = seq[:, :-1], seq[:, 1:]
      tlosses = []

      def torch_step():
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tlosses.append(float(loss.detach()))  # waits for the step
        common.torch_sync(torch_device)
      theirs_t = common.time_calls(torch_step, steps, f"transformers batch {B}", logging.info)
      theirs = _summary(theirs_t, tokens, flops_per_token, peak["best"],
                        peak_flops if accel else None, tlosses[0])
      del opt, seq, inputs, targets
      model.eval()
      common.free_memory()

    loss = {"star_jax": ours["first_step_loss"],
            "transformers": theirs["first_step_loss"] if theirs else None}
    if theirs:
      loss["rel_diff"] = (abs(loss["star_jax"] - loss["transformers"])
                          / max(abs(loss["transformers"]), 1e-12))
      loss["agree"] = loss["rel_diff"] <= LOSS_RTOL
      loss["rtol"] = LOSS_RTOL
      if not loss["agree"]:
        logging.warning("batch %d: first-step losses differ: star_jax %.6f, transformers %.6f",
                        B, loss["star_jax"], loss["transformers"])
    rec = records.record(
        "train", f"batch={B} seq_len={seq_len}", "train_tokens_per_s", ours["tokens_per_s"],
        theirs["tokens_per_s"] if theirs else None, peer, machine, cmd,
        checkpoint=checkpoint, dtype="float32", batch=B, seq_len=seq_len, tokens_per_step=tokens,
        timed_steps=steps,
        optimizer={"learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps,
                   "weight_decay": weight_decay, "clip_norm": clip_norm},
        flops_per_token=flops_per_token, matmul_peak_flops=peak,
        peak_flops=peak_flops if accel else None,
        star_jax_detail=ours, transformers_detail=theirs, first_step_loss=loss)
    records.emit(rec)
    results.append(rec)
  if markdown:
    records.print_markdown(results)
  return results


def define_flags() -> None:
  common.define_peer_flags(DEFAULT_CHECKPOINT)
  flags.DEFINE_list("batch_sizes", ["4", "8"], "rows per step, one case each")
  flags.DEFINE_integer("seq_len", 256, "tokens per row")
  flags.DEFINE_integer("steps", 3, "timed steps after the first (compiling / warm-up) one")
  flags.DEFINE_float("learning_rate", 1e-4, "AdamW learning rate (both frameworks)")
  flags.DEFINE_float("b1", 0.9, "AdamW beta1")
  flags.DEFINE_float("b2", 0.999, "AdamW beta2")
  flags.DEFINE_float("eps", 1e-8, "AdamW epsilon")
  flags.DEFINE_float("weight_decay", 0.01, "AdamW weight decay (matrices only)")
  flags.DEFINE_float("clip_norm", 1.0, "global gradient-norm clip")
  flags.DEFINE_integer("matmul_n", None, "size of the peak-FLOP/s matmul (default 2048 on CPU, "
                       "8192 on accelerators)")
  flags.DEFINE_integer("matmul_repeats", 5, "timed matmuls (best is kept)")
  flags.DEFINE_float("peak_flops", None, "peak FLOP/s of one accelerator, for MFU (GPU/TPU)")
  flags.DEFINE_integer("seed", 0, "seed of the random token rows")
  common.define_markdown_flag()


def main(argv):
  F = common.parsed_flags(argv)
  run(checkpoint=F.checkpoint, batch_sizes=F.batch_sizes, seq_len=F.seq_len, steps=F.steps,
      learning_rate=F.learning_rate, b1=F.b1, b2=F.b2, eps=F.eps, weight_decay=F.weight_decay,
      clip_norm=F.clip_norm, matmul_n=F.matmul_n, matmul_repeats=F.matmul_repeats,
      peak_flops=F.peak_flops, device=F.device, mesh_shape=F.mesh,
      matmul_precision=F.matmul_precision, peers=F.peers, seed=F.seed, markdown=F.markdown)


if __name__ == "__main__":
  define_flags()
  app.run(main)
