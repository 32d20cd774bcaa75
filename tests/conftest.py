"""Test setup: 8 fake CPU devices so every sharding test runs on a real mesh."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# True float32 matmuls everywhere, whatever the test order: parity tolerances (sharded against
# unsharded after an Adam step, ours against transformers) are set for them. (The benchmark
# tests set this too; before, every test collected after them inherited it by accident.)
jax.config.update("jax_default_matmul_precision", "highest")

from star_jax.engine import sharding  # noqa: E402


def mesh_of(shape):
  n = int(np.prod(shape))
  return sharding.make_mesh(shape, devices=jax.devices()[:n])


@pytest.fixture(scope="session")
def mesh1():
  return mesh_of((1, 1, 1))


@pytest.fixture(scope="session")
def mesh8():
  return mesh_of((2, 2, 2))
