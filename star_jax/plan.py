"""Memory plan: does a config's run fit on N devices of G GiB each? No accelerator needed.

  python -m star_jax.plan --config=configs/cqa.py --devices=8 --device_memory_gib=80 \
      --config.model.preset=gptj-6b --config.model.checkpoint='' --config.mesh.fsdp=-1 \
      --config.mesh.data=1 [--prompt_len=P] [--new_tokens=N]
  python -m star_jax.plan --config=... --topology=v5e-64 [--train_only] [--nocost]
      [--cost_layers]

Compiles the train step and the sampler (prefill, decode loop) for abstract arrays on N fake
CPU devices and prints each program's per-device memory (arguments, outputs, temporaries,
total) against the budget, what dominates, and a verdict; the last stdout line is the report
as JSON. Exits 1 when something does not fit, 2 on a config error.

Will this config's run fit in memory on N devices of G GiB each? Asked without the hardware.

The run's train step and its sampler (prefill and decode loop) are compiled for abstract
arrays on the mesh the config asks for (the devices are this host's, the command line makes
N fake CPU ones), and each compiled program's per-device figures are set against the budget
with what its parts take: parameters, optimizer state, gradients and the KV cache from their
shapes and shardings, activations derived from XLA's temporaries (see ``engine.memory``).
"""

import os
import sys


def _fake_devices(argv) -> None:
  """N CPU devices for the mesh: XLA reads the flag when jax starts, so before any import.
  With --topology the devices are the TPU topology's (abstract), and the host keeps one."""
  n = next((a.split("=", 1)[1] for a in argv if a.startswith("--devices=")), "8")
  if any(a.startswith("--topology=") and a != "--topology=" for a in argv):
    n = "1"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
  os.environ["JAX_PLATFORMS"] = "cpu"  # plan on the host even where an accelerator is present


if __name__ == "__main__":
  _fake_devices(sys.argv)

import dataclasses  # noqa: E402
import json  # noqa: E402
import logging as std_logging  # noqa: E402
import math  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from star_jax import config as config_lib  # noqa: E402
from star_jax.config import Config  # noqa: E402
from star_jax.engine import chips, model_config, sharding  # noqa: E402
from star_jax.engine.memory import GIB, abstract_params, plan_train_step  # noqa: E402
from star_jax.experiment.models import is_bare_orbax, make_task  # noqa: E402
from star_jax.experiment.models import model_config_of as from_checkpoint  # noqa: E402
from star_jax.runtime import cli  # noqa: E402
from star_jax.runtime.compiling import compiling_for  # noqa: E402
from star_jax.runtime.errors import CheckpointError, ConfigError  # noqa: E402
from star_jax.sampling import Sampler  # noqa: E402
from star_jax.sampling.sampling_params import SamplingParams  # noqa: E402
from star_jax.sampling.sampler_memory import plan_sampler  # noqa: E402
from star_jax.star.finetune import micro_batching, optim_config  # noqa: E402

# Prompt length estimate without a tokenizer: English BPE averages about 4 characters a token;
# 3 leaves room for tokenizers that split finer, so the plan errs on the large side.
CHARS_PER_TOKEN = 3


def model_config_of(config: Config) -> tuple[str, model_config.ModelConfig]:
  """(name, ModelConfig) the run would build: a pre-trained checkpoint's own metadata, else the
  preset with its overrides and the vocabulary a SentencePiece tokenizer of
  ``tokenizer.vocab_size`` ids would ask for (as ``experiment.build_model_config`` does);
  with ``model.lora_rank``, its adapters."""
  ckpt = config.model.checkpoint
  if ckpt and not is_bare_orbax(ckpt):
    # A pre-trained checkpoint or an earlier run (experiment.models resolves every name); a
    # hub id not at hand whose published config is a preset plans from the preset.
    name, cfg = ckpt, _published(ckpt, config.model.dtype) or from_checkpoint(
        ckpt, dtype=config.model.dtype or None)
    cfg = cfg.replace(lora_rank=0)
    # As a run loads it (experiment/build.py): the overrides may say how it runs, no more.
    cfg = cfg.replace(**model_config.execution_of(config.model.overrides))
  else:
    name = config.model.preset
    cfg = model_config.get_preset(config.model.preset, **config.model.overrides)
    if not config.tokenizer.path and config.tokenizer.kind == "sentencepiece":
      cfg = cfg.replace(vocab_size=max(cfg.vocab_size,
                                       -(-config.tokenizer.vocab_size // 128) * 128))
  if config.model.lora_rank:
    cfg = cfg.replace(lora_rank=config.model.lora_rank, lora_alpha=config.model.lora_alpha,
                      lora_targets=model_config.lora_targets(config.model.lora_targets))
  return name, cfg


def _published(ckpt: str, dtype: str) -> model_config.ModelConfig | None:
  """The preset of a hub id's published config when the checkpoint is not at hand (offline,
  or not yet fetched): a plan needs the architecture, not the weights."""
  repo = ckpt.partition("@")[0]
  if repo not in model_config.HUB_PRESETS or os.path.exists(ckpt):
    return None
  try:
    from_checkpoint(ckpt, dtype=dtype or None)  # cached (or fetchable): its own config wins
    return None
  except CheckpointError:
    preset = model_config.HUB_PRESETS[repo]
    std_logging.info("%s is not at hand: planning with the preset %s, its published config",
                     ckpt, preset)
    cfg = model_config.get_preset(preset)
    return cfg.replace(param_dtype=dtype, dtype=dtype) if dtype else cfg


def estimated_prompt_len(config: Config, task) -> int:
  """Tokens of the task's longest prompt (hinted when rationalizing), from its characters."""
  exemplars = task.exemplars()
  if not exemplars:
    raise ConfigError(f"task {config.task!r} has no exemplar to estimate a prompt from: pass "
                     "--prompt_len")
  hint = bool(config.star.rationalize)
  text = task.prompt(exemplars[-1], hint=hint, few_shot=bool(config.star.few_shot))
  return math.ceil(len(text) / CHARS_PER_TOKEN)


def plan(config: Any, device_memory_gib: float | None, prompt_len: int = 0,
         new_tokens: int = 0, topology: str = "", train_only: bool = False,
         cost: bool = True, cost_layers: bool = False) -> dict[str, Any]:
  """The report: model, mesh, shapes, every program's figures and parts, and the verdict;
  ``config`` a ConfigDict or a ``config.Config``. With ``topology`` (``v5e:2x4``, ``v4-8``)
  the programs are compiled by the TPU compiler for that slice's chips (budget: a chip's HBM
  unless ``device_memory_gib`` says otherwise), with roofline times; else by XLA:CPU for this
  host's (fake) devices. ``train_only`` skips the sampler's programs; ``cost=False`` skips the
  loop-free compiles the roofline needs (with both, a 64-chip plan of an 8B model takes
  minutes and ~2 GiB of host memory instead of more than 23); ``cost_layers`` fits the train
  step's and the sampler's cost through copies of the model with 1 and 2 layers (a large
  slice's roofline in a layer's host memory; ``engine.memory.micro_batch_cost``)."""
  config = config_lib.load(config)
  if topology:
    try:
      chip, devices = chips.topology_devices(topology)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    device_memory_gib = device_memory_gib or chip.hbm_gib
    with compiling_for("tpu"):
      report = _plan(config, devices, device_memory_gib, prompt_len, new_tokens, chip,
                     train_only, cost, cost_layers)
    report["compiler"] = (f"TPU compiler (libtpu {_version('libtpu')}) for {topology}: "
                          f"{len(devices)} x {chip.device_kind}")
    report["chip"] = dataclasses.asdict(chip)
    return report
  if device_memory_gib is None:
    raise ConfigError("give --device_memory_gib (or --topology for a TPU slice)")
  report = _plan(config, jax.devices(), device_memory_gib, prompt_len, new_tokens, None,
                 train_only, cost, cost_layers)
  report["compiler"] = (f"XLA:CPU for {jax.device_count()} fake CPU devices (activations are "
                        "XLA:CPU's; check them on the device, or plan with --topology)")
  return report


def _version(dist: str) -> str:
  import importlib.metadata
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "?"


def _plan(config: Config, devices, device_memory_gib: float, prompt_len: int, new_tokens: int,
          chip: chips.Chip | None, train_only: bool, cost: bool, cost_layers: bool = False
          ) -> dict[str, Any]:
  name, cfg = model_config_of(config)
  cost = cost and chip is not None  # the roofline is the TPU compiler's
  try:
    mesh = sharding.make_mesh(dataclasses.asdict(config.mesh), devices=devices)
  except ValueError as e:
    raise ConfigError(f"config.mesh {dataclasses.asdict(config.mesh)} does not fit "
                      f"{len(devices)} devices: {e}") from None
  tc, budget = config.train, int(device_memory_gib * GIB)
  # The micro-batches a run lays a step's rows out in on this mesh (star/finetune.py).
  rows, micro = micro_batching(tc.batch_size, tc.grad_accum, sharding.batch_divisor(mesh))
  shape = (micro, rows, tc.seq_len)
  task = make_task(config)
  prompt_len = prompt_len or estimated_prompt_len(config, task)
  new_tokens = new_tokens or task.max_new_tokens
  graphdef, params = abstract_params(cfg, mesh)
  std_logging.info("planning %s (%.2fB params) on mesh %s", name, cfg.num_params() / 1e9,
               sharding.describe(mesh))
  programs = [plan_train_step(graphdef, params, mesh, optim_config(tc, 1), shape,
                              master_dtype=tc.master_dtype, cost=cost,
                              cost_layers=cost_layers)]
  if not train_only:
    programs += _sampler_programs(config, cfg, graphdef, params, mesh, prompt_len, new_tokens,
                                  cost, cost_layers)
  report = {"model": name, "num_params": cfg.num_params(), "param_dtype": cfg.param_dtype,
            "lora_rank": cfg.lora_rank, "devices": len(devices), "mesh": dict(mesh.shape),
            "device_memory_gib": device_memory_gib, "train_shape": list(shape),
            "prompt_len": prompt_len, "new_tokens": new_tokens,
            "programs": [p.as_dict(budget) for p in programs],
            "fits": all(p.overshoot(budget) <= 0 for p in programs)}
  if chip is not None:
    rows = config.sample.batch_size
    for p in report["programs"]:
      p["roofline"] = (chips.speeds(p, chip, cfg, len(devices), shape, rows, prompt_len,
                                    config.star.samples_per_question) if cost
                       else {"note": "not computed (--nocost)"})
  return report


def _sampler_programs(config: Config, cfg, graphdef, params, mesh, prompt_len: int,
                      new_tokens: int, cost: bool, cost_layers: bool = False) -> list:
  """The sampler's prefill and decode loop as a run builds them."""
  sampler = Sampler(cfg, graphdef, mesh, batch_size=config.sample.batch_size,
                    layout=config.sample.layout)
  sp = SamplingParams(config.star.temperature, config.star.top_k, config.star.top_p)
  return plan_sampler(sampler, params, prompt_len, new_tokens, config.star.samples_per_question,
                      sp, cost=cost, cost_layers=cost_layers)


def format_report(r: dict[str, Any]) -> str:
  mesh = ", ".join(f"{k}={v}" for k, v in r["mesh"].items())
  lines = [f"{r['model']}: {r['num_params'] / 1e9:.2f}B parameters ({r['param_dtype']}) on "
           f"{r['devices']} devices ({mesh}) of {r['device_memory_gib']:g} GiB each",
           f"compiled by: {r.get('compiler', 'XLA')}",
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
    roof = p.get("roofline") or {}
    if "unit_seconds" in roof:
      lines.append(f"  {'':14}roofline: {roof['unit_seconds'] * 1e3:.2f} ms per {roof['unit']} "
                   f"({roof['bound']}-bound; {p['cost']['flops'] / 1e12:.3f} TFLOP, "
                   f"{roof['bytes'] / 1e9:.2f} GB per device"
                   + (f" = its arguments; XLA counts {p['cost']['bytes accessed'] / 1e9:.2f}"
                      if roof["bytes"] < p["cost"].get("bytes accessed", 0) else "")
                   + f"; compute alone {roof['compute_seconds'] * 1e3:.2f} ms) -> at most "
                   f"{roof['tokens_per_s']:,.0f} tokens/s, MFU <= {roof['mfu_bound']:.0%}"
                   + (f"; the compiler counts {roof['compiler_over_model_flops']:.2f} x the "
                      "model's FLOPs" if "compiler_over_model_flops" in roof else "")
                   + (f"; cost {roof['cost_note']}" if "cost_note" in roof else ""))
    elif roof:
      lines.append(f"  {'':14}roofline: {roof['note']}")
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



def define_flags() -> dict:
  """The command's flags (defined only when it runs: the module is a library too)."""
  out = {
      "config": config_flags.DEFINE_config_file("config", None, "A configs/*.py file[:variant].",
                                                lock_config=True),
      "devices": flags.DEFINE_integer("devices", 8, "Devices to plan for (made as fake CPU "
                                      "devices)."),
      "memory": flags.DEFINE_float("device_memory_gib", None, "Memory of one device, GiB "
                                   "(with --topology: default the chip's HBM)."),
      "topology": flags.DEFINE_string("topology", "", "Compile with the TPU compiler for this "
                                      "TPU slice (v5e:2x4, v4-8, ...; needs libtpu: pip install "
                                      "-e '.[tpu]'), with roofline times; no TPU needed."),
      "prompt_len": flags.DEFINE_integer("prompt_len", 0, "Prompt tokens per sampled row (0: "
                                         "the task's few-shot prompt, estimated at 3 characters "
                                         "a token)."),
      "new_tokens": flags.DEFINE_integer("new_tokens", 0, "New tokens per row (0: "
                                         "star.max_new_tokens, else the task's default)."),
      "train_only": flags.DEFINE_bool("train_only", False, "Plan the train step only, not "
                                      "the sampler's programs."),
      "cost": flags.DEFINE_bool("cost", True, "With --topology: compile loop-free copies for "
                                "the roofline (slow, and most of the host memory a large "
                                "slice's plan takes); --nocost for memory alone."),
      "cost_layers": flags.DEFINE_bool("cost_layers", False, "Fit the train step's and the "
                                       "sampler's cost through loop-free compiles of 1 and 2 "
                                       "layers (models whose layers are alike): a many-chip "
                                       "slice's roofline in a layer's host memory."),
  }
  flags.mark_flags_as_required(["config"])
  return out


FLAGS: dict = {}


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.log_progress()
  topology = FLAGS["topology"].value
  if not topology and jax.device_count() != FLAGS["devices"].value:
    sys.exit(f"plan: jax has {jax.device_count()} devices, not --devices={FLAGS['devices'].value} "
             "(was jax started before the flag was set?)")
  try:
    report = plan(FLAGS["config"].value, FLAGS["memory"].value, FLAGS["prompt_len"].value,
                  FLAGS["new_tokens"].value, topology, FLAGS["train_only"].value,
                  FLAGS["cost"].value, FLAGS["cost_layers"].value)
  except ValueError as e:
    print(f"plan: {e}", file=sys.stderr)
    sys.exit(2)
  print(format_report(report))
  print(json.dumps(report))
  sys.stdout.flush()
  sys.exit(0 if report["fits"] else 1)


if __name__ == "__main__":
  FLAGS.update(define_flags())
  cli.run(main)
