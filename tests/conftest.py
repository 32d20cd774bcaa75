"""Test setup: 8 fake CPU devices so every sharding test runs on a real mesh."""

import os
import shutil
import tempfile

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, shared by this process and the runs it
# starts (resume, multi-host, notebook, command lines): a program compiled once is loaded, not
# recompiled, by every later test that builds it (the same executable, so the same results).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE = tempfile.mkdtemp(
      prefix="star_jax_test_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"

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


def pytest_sessionfinish(session, exitstatus):
  if "_SESSION_CACHE" in globals():
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
