"""Memory plan: does a config's run fit on N devices of G GiB each? No accelerator needed.

  python -m star_jax.plan --config=configs/cqa.py --devices=8 --device_memory_gib=80 \
      --config.model.preset=gptj-6b --config.model.checkpoint='' --config.mesh.fsdp=-1 \
      --config.mesh.data=1 [--prompt_len=P] [--new_tokens=N]

Compiles the train step and the sampler (prefill, decode loop) for abstract arrays on N fake
CPU devices and prints each program's per-device memory (arguments, outputs, temporaries,
total) against the budget, what dominates, and a verdict; the last stdout line is the report
as JSON. Exits 1 when something does not fit, 2 on a config error.
"""

import os
import sys


def _fake_devices(argv) -> None:
  """N CPU devices for the mesh: XLA reads the flag when jax starts, so before any import."""
  n = next((a.split("=", 1)[1] for a in argv if a.startswith("--devices=")), "8")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
  os.environ["JAX_PLATFORMS"] = "cpu"  # plan on the host even where an accelerator is present


if __name__ == "__main__":
  _fake_devices(sys.argv)

import json  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file[:variant].",
                                          lock_config=True)
_DEVICES = flags.DEFINE_integer("devices", 8, "Devices to plan for (made as fake CPU devices).")
_MEMORY = flags.DEFINE_float("device_memory_gib", None, "Memory of one device, GiB.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 0, "Prompt tokens per sampled row (0: the "
                                   "task's few-shot prompt, estimated at 3 characters a token).")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 0, "New tokens per row (0: star.max_new_tokens, "
                                   "else the task's default).")
flags.mark_flags_as_required(["config", "device_memory_gib"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  import jax  # after the device flag is set

  from star_jax.star import plan
  if jax.device_count() != _DEVICES.value:
    sys.exit(f"plan: jax has {jax.device_count()} devices, not --devices={_DEVICES.value} "
             "(was jax started before the flag was set?)")
  try:
    report = plan.plan(_CONFIG.value, _MEMORY.value, _PROMPT_LEN.value, _NEW_TOKENS.value)
  except ValueError as e:
    print(f"plan: {e}", file=sys.stderr)
    sys.exit(2)
  print(plan.format_report(report))
  print(json.dumps(report))
  sys.stdout.flush()
  sys.exit(0 if report["fits"] else 1)


if __name__ == "__main__":
  app.run(main)
