"""Multi-host runs on JAX's own multi-controller runtime (``jax.distributed``).

Every process runs the same program over the same host data: jitted functions
see global arrays sharded over the global mesh, so each question is sampled on
exactly one device and each training row lives on one data shard; results are
gathered back with ``process_allgather`` so every process takes the same
host-side decisions. Only process 0 writes files (orbax checkpoints are written
collectively by all of them).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
  """Starts jax.distributed from flags, or automatically on a multi-host Cloud TPU slice."""
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _on_multihost_tpu():
    jax.distributed.initialize()  # Cloud TPU: coordinator and ids come from the TPU metadata
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _on_multihost_tpu() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def is_primary() -> bool:
  return jax.process_index() == 0


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host) array, on every process."""
  if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
