"""TPU generations: what one chip holds and computes, their abstract devices, and the roofline.

``topology_devices("v5e:2x4")`` (or a slice name, ``"v5e-8"``) gives the devices of that TPU
topology as libtpu describes them, on any host: programs lower and compile for them with the TPU
compiler (``pip install -e ".[tpu]"`` brings libtpu), nothing runs. One device is one chip
(v4 and v5p as megacore: the chip's two TensorCores are one device).

The chip figures are Google's published ones (each ``Chip`` names its page): HBM per chip,
peak dense bfloat16 FLOP/s, HBM bandwidth. A roofline time is the larger of FLOPs / peak and
bytes / bandwidth: no program runs faster, so speeds derived from it are upper bounds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  device_kind: str  # jax's Device.device_kind for it
  hbm_gib: float  # per chip
  peak_bf16_flops: float  # per chip, dense
  hbm_bytes_per_s: float
  source: str
  megacore: bool  # two TensorCores act as one device
  accelerator: str  # TPU_ACCELERATOR_TYPE prefix; v4 and v5p count cores, v5e and v6e chips

  @property
  def hbm_bytes(self) -> int:
    return int(self.hbm_gib * GIB)


CHIPS = {
    "v4": Chip("v4", "TPU v4", 32, 275e12, 1200e9, "https://cloud.google.com/tpu/docs/v4",
               megacore=True, accelerator="v4"),
    "v5e": Chip("v5e", "TPU v5 lite", 16, 197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e",
                megacore=False, accelerator="v5litepod"),
    "v5p": Chip("v5p", "TPU v5", 95, 459e12, 2765e9, "https://cloud.google.com/tpu/docs/v5p",
                megacore=True, accelerator="v5p"),
    "v6e": Chip("v6e", "TPU v6 lite", 32, 918e12, 1640e9, "https://cloud.google.com/tpu/docs/v6e",
                megacore=False, accelerator="v6e"),
}
# Slice names (as `gcloud` spells them: v4 and v5p count TensorCores, v5e and v6e chips) and the
# chip topology each stands for.
SLICES = {"v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4",
          "v4-128": "v4:4x4x4", "v5e-4": "v5e:2x2", "v5e-8": "v5e:2x4", "v5e-16": "v5e:4x4",
          "v5e-32": "v5e:4x8", "v5e-64": "v5e:8x8", "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2",
          "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4"}


def parse_topology(name: str) -> tuple[Chip, str, int]:
  """(chip, "gen:AxBxC" topology, chips) of a topology or slice name."""
  topology = SLICES.get(name, name)
  m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)", topology)
  if m is None:
    raise ValueError(f"unknown TPU topology {name!r}: give a chip topology (v5e:2x4, "
                     f"v4:2x2x1) or a slice name ({', '.join(SLICES)})")
  chips = math.prod(int(d) for d in m.group(2).split("x"))
  return CHIPS[m.group(1)], topology, chips


def topology_devices(name: str) -> tuple[Chip, list]:
  """The chip and the abstract devices of a TPU topology (compile only, never run)."""
  chip, topology, chips = parse_topology(name)
  if importlib.util.find_spec("libtpu") is None:  # the TPU compiler: jax finds it there
    raise ImportError("compiling for a TPU topology needs libtpu: pip install -e \".[tpu]\" "
                      "(no TPU needed; plans without --topology use XLA:CPU)")
  from jax.experimental import topologies
  # libtpu reads these at start-up; without them it logs errors about the host it runs on.
  count = chips * (2 if chip.accelerator in ("v4", "v5p") else 1)
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{chip.accelerator}-{count}")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Compiling runs nothing on a TPU: a second plan (or a test) may load libtpu while another
  # holds it, instead of failing on libtpu's one-process lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  desc = topologies.get_topology_desc(
      topology_name=topology, platform="tpu",
      chip_config_name="megacore" if chip.megacore else "default")
  devices = list(desc.devices)
  if len(devices) != chips:
    raise RuntimeError(f"libtpu describes {topology} as {len(devices)} devices, not {chips} chips")
  return chip, devices


def roofline_seconds(flops: float, bytes_accessed: float, chip: Chip) -> float:
  """The least time one device needs for a program: FLOPs at peak or bytes at bandwidth."""
  return max(flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s)


def bound(flops: float, bytes_accessed: float, chip: Chip) -> str:
  """Which limit sets the roofline time: "compute" or "memory bandwidth"."""
  return ("compute" if flops / chip.peak_bf16_flops >= bytes_accessed / chip.hbm_bytes_per_s
          else "memory bandwidth")


def speeds(program: dict, chip: Chip, cfg, devices: int, train_shape: tuple[int, int, int],
           rows: int, prompt_len: int, samples: int) -> dict:
  """Roofline figures of one planned program (``ProgramPlan.as_dict``): the time of the unit its
  cost counts, and from it upper bounds on tokens/s and MFU (model FLOPs / the slice's peak).

  Train step: the cost is one micro-batch's (a loop-free compile), times the micro-batches;
  model FLOPs are ``cfg.flops_per_token`` (6 N + attention). Prefill: one pass over the batch's
  prompts, 2 N a token but the LM head's 2 V D once a prompt (only its last position's logits
  are computed). Decode loop: one step, a token for every row; model FLOPs 2 N per token.

  A decode step's bytes are at most its arguments (the parameters and the KV cache, which it
  reads once): XLA's bytes accessed count the whole cache buffer for every in-place update
  of it (measured: 12x the arguments for GPT-J), which would make the bound no bound.
  """
  cost = program.get("cost") or {}
  if not program.get("cost_unit") or "flops" not in cost:
    why = ("the compiler refused the program" if program.get("capacity")
           else program.get("cost_note") or "scanned layers count one layer")
    return {"note": f"no cost analysis for this program ({why})"}
  flops, nbytes = cost["flops"], cost.get("bytes accessed", 0.0)
  decode = program["cost_unit"] == "decode step"
  if decode and program.get("arguments"):
    nbytes = min(nbytes, program["arguments"] * 2**30)
  unit_s = roofline_seconds(flops, nbytes, chip)
  # FLOPs at peak is a hard floor on the time; XLA's bytes accessed are its estimate, which
  # counts every fusion's operands whole (the bandwidth term can overshoot the device's).
  out = {"unit": program["cost_unit"], "unit_seconds": unit_s, "bound": bound(flops, nbytes, chip),
         "bytes": nbytes, "compute_seconds": flops / chip.peak_bf16_flops}
  if program.get("cost_note"):
    out["cost_note"] = program["cost_note"]
  peak = devices * chip.peak_bf16_flops
  n_matmul = cfg.num_params(include_embedding=False) + (
      cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)
  if program["what"].startswith("train step"):
    micro, batch, seq = train_shape
    step_s = unit_s * micro
    tokens = micro * batch * seq
    model_flops = cfg.flops_per_token(seq) * tokens
    # The compiler's count of the whole step against the model's: above 1 by attention's full
    # square (the model counts the causal half) and remat's second forward; below 1, the
    # compiler missed work (its compute-alone time is then no floor).
    out.update(step_seconds=step_s, tokens_per_s=tokens / step_s,
               mfu_bound=model_flops / (step_s * peak),
               compiler_over_model_flops=flops * micro * devices / model_flops)
  elif "prefill" in program["what"]:
    prompts = max(rows // max(samples, 1), 1)
    tokens = prompts * prompt_len
    # the LM head runs at each prompt's last position only (sampling/decode.py: prefill)
    head = cfg.vocab_size * cfg.d_model
    model_flops = 2 * (n_matmul - head) * tokens + 2 * head * prompts
    out.update(tokens_per_s=tokens / unit_s, mfu_bound=model_flops / (unit_s * peak))
  else:
    out.update(tokens_per_s=rows / unit_s, mfu_bound=2 * n_matmul * rows / (unit_s * peak))
  return out
