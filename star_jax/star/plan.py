"""Will this config's run fit in memory on N devices of G GiB each? Asked without the hardware.

The run's train step and its sampler (prefill and decode loop) are compiled for abstract
arrays on the mesh the config asks for (the devices are this host's, the command line makes
N fake CPU ones), and each compiled program's per-device figures are set against the budget
with what its parts take: parameters, optimizer state, gradients and the KV cache from their
shapes and shardings, activations derived from XLA's temporaries (see ``engine.planning``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import ml_collections

from star_jax.engine import model_config, sharding
from star_jax.engine.planning import GIB, abstract_params, plan_train_step
from star_jax.sampling import Sampler
from star_jax.sampling.methods import SamplingParams
from star_jax.sampling.planning import plan_sampler
from star_jax.star.experiment import is_star_jax_checkpoint
from star_jax.star.finetune import micro_batching, optim_config
from star_jax.tasks import get_task

# Prompt length estimate without a tokenizer: English BPE averages about 4 characters a token;
# 3 leaves room for tokenizers that split finer, so the plan errs on the large side.
CHARS_PER_TOKEN = 3


def model_config_of(config: ml_collections.ConfigDict) -> tuple[str, model_config.ModelConfig]:
  """(name, ModelConfig) the run would build: a pre-trained checkpoint's own metadata, else the
  preset with its overrides and the vocabulary a SentencePiece tokenizer of
  ``tokenizer.vocab_size`` ids would ask for (as ``experiment.build_model_config`` does);
  with ``model.lora_rank``, its adapters."""
  ckpt = config.model.checkpoint
  if ckpt and not is_star_jax_checkpoint(ckpt):
    from star_jax.hub import model_config_of as from_checkpoint  # tokenizers/gguf: when needed
    name, cfg = ckpt, from_checkpoint(ckpt, dtype=config.model.dtype or None)
    # As a run loads it (star/experiment.py): the overrides may say how it runs, no more.
    cfg = cfg.replace(**model_config.execution_of(config.model.overrides))
  else:
    name = config.model.preset
    cfg = model_config.get_preset(config.model.preset, **dict(config.model.overrides or {}))
    if not config.tokenizer.path and config.tokenizer.kind == "sentencepiece":
      cfg = cfg.replace(vocab_size=max(cfg.vocab_size,
                                       -(-config.tokenizer.vocab_size // 128) * 128))
  if config.model.lora_rank:
    cfg = cfg.replace(lora_rank=config.model.lora_rank, lora_alpha=config.model.lora_alpha,
                      lora_targets=model_config.lora_targets(config.model.lora_targets))
  return name, cfg


def estimated_prompt_len(config: ml_collections.ConfigDict, task) -> int:
  """Tokens of the task's longest prompt (hinted when rationalizing), from its characters."""
  exemplars = task.exemplars()
  if not exemplars:
    raise ValueError(f"task {config.task!r} has no exemplar to estimate a prompt from: pass "
                     "--prompt_len")
  hint = bool(config.star.rationalize)
  text = task.prompt(exemplars[-1], hint=hint, few_shot=bool(config.star.few_shot))
  return math.ceil(len(text) / CHARS_PER_TOKEN)


def plan(config: ml_collections.ConfigDict, device_memory_gib: float, prompt_len: int = 0,
         new_tokens: int = 0) -> dict[str, Any]:
  """The report: model, mesh, shapes, every program's figures and parts, and the verdict."""
  name, cfg = model_config_of(config)
  devices = jax.devices()
  try:
    mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
  except ValueError as e:
    raise ValueError(f"config.mesh {dict(config.mesh)} does not fit {len(devices)} devices: "
                     f"{e}") from None
  tc, budget = config.train, int(device_memory_gib * GIB)
  # The micro-batches a run lays a step's rows out in on this mesh (star/finetune.py).
  rows, micro = micro_batching(tc.batch_size, tc.grad_accum, sharding.batch_divisor(mesh))
  shape = (micro, rows, tc.seq_len)
  task = get_task(config.task, max_new_tokens=config.star.max_new_tokens or None,
                  **dict(config.task_options))
  prompt_len = prompt_len or estimated_prompt_len(config, task)
  new_tokens = new_tokens or task.max_new_tokens
  graphdef, params = abstract_params(cfg, mesh)
  logging.info("planning %s (%.2fB params) on mesh %s", name, cfg.num_params() / 1e9,
               sharding.describe(mesh))
  programs = [plan_train_step(graphdef, params, mesh, optim_config(tc, 1), shape,
                              master_dtype=tc.master_dtype)]
  sampler = Sampler(cfg, graphdef, mesh, batch_size=config.sample.batch_size,
                    layout=config.sample.layout)
  sp = SamplingParams(config.star.temperature, config.star.top_k, config.star.top_p)
  programs += plan_sampler(sampler, params, prompt_len, new_tokens,
                           config.star.samples_per_question, sp)
  return {"model": name, "num_params": cfg.num_params(), "param_dtype": cfg.param_dtype,
          "devices": len(devices), "mesh": dict(mesh.shape), "device_memory_gib": device_memory_gib,
          "train_shape": list(shape), "prompt_len": prompt_len, "new_tokens": new_tokens,
          "programs": [p.as_dict(budget) for p in programs],
          "fits": all(p.overshoot(budget) <= 0 for p in programs)}


def format_report(r: dict[str, Any]) -> str:
  mesh = ", ".join(f"{k}={v}" for k, v in r["mesh"].items())
  lines = [f"{r['model']}: {r['num_params'] / 1e9:.2f}B parameters ({r['param_dtype']}) on "
           f"{r['devices']} devices ({mesh}) of {r['device_memory_gib']:g} GiB each",
           f"per device, GiB: {'arguments':>9} {'outputs':>8} {'temps':>8} {'total':>8}  compile"]
  for p in r["programs"]:
    lines.append(f"  {p['what']}")
    lines.append(f"  {'':14}{p['arguments']:9.2f} {p['outputs']:8.2f} {p['temporaries']:8.2f} "
                 f"{p['total']:8.2f}  {p['compile_s']:.1f} s")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in p["parts"].items())
    lines.append(f"  {'':14}parts: {parts} ({p['derived']})")
    if any(p["collectives"].values()):
      lines.append(f"  {'':14}collectives: " + ", ".join(
          f"{v:.2f} {k}" for k, v in p["collectives"].items()) + " (GiB received per device)")
    if p["fits"]:
      lines.append(f"  {'':14}fits: {r['device_memory_gib'] - p['total']:.2f} GiB to spare")
    else:
      lines.append(f"  {'':14}DOES NOT FIT by {p['overshoot']:.2f} GiB; {p['dominant']} "
                   f"dominate ({p['parts'][p['dominant']]:.2f} GiB)")
  short = [p for p in r["programs"] if not p["fits"]]
  if short:
    lines.append("verdict: does not fit: " + "; ".join(
        f"{p['what'].split(' (')[0]} by {p['overshoot']:.2f} GiB ({p['dominant']})"
        for p in short))
  else:
    lines.append("verdict: fits")
  return "\n".join(lines)
