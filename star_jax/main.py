"""Entry point: ``python -m star_jax.main --config=configs/<task>.py[:smoke] --workdir=DIR``."""

from absl import flags, logging
from ml_collections import config_flags

from star_jax import star
from star_jax.runtime import cli, distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, artifacts, checkpoints.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete an earlier run's artifacts in --workdir "
                                "and start over (default: resume it).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0, for "
                                   "multi-process runs outside Cloud TPU (GPUs, CPUs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's id (0 .. num_processes-1).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.log_progress()
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    star.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except distributed.Preempted as e:  # a preemption notice, saved at a safe point: exit 0
    logging.warning("%s", e)


if __name__ == "__main__":
  cli.run(main)
