"""Sharded equals unsharded: forward, one train step, greedy samples; mesh construction."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from conftest import mesh_of
from helpers.reference import forward
from star_jax.engine import batching, params as params_lib, sharding
from star_jax.engine.model_config import get_preset
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import BATCH_KEYS, Trainer
from star_jax.sampling import Sampler

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]


def _examples():
  rng = np.random.default_rng(0)
  return [batching.TrainExample(rng.integers(3, 250, rng.integers(2, 9)).tolist(),
                                rng.integers(3, 250, rng.integers(1, 9)).tolist())
          for _ in range(24)]


def _run(shape, preset="tiny"):
  """Forward logits, one train step (metrics, params) and greedy samples on a mesh."""
  cfg = get_preset(preset)
  mesh = mesh_of(shape)
  graphdef, params = params_lib.init_params(cfg, mesh, seed=0)
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (8, 12)).astype(np.int32)
  with jax.set_mesh(mesh):
    logits = np.asarray(forward(graphdef, params, tokens))
  samples = Sampler(cfg, graphdef, mesh, batch_size=8).sample(
      params, [[1, 2, 3], [4, 5], [6, 7, 8, 9]], 8).tokens
  # eps well above float32 rounding of the gradients: with the default 1e-8 Adam's first step,
  # lr * g / (|g| + eps), turns reduction-order noise in a near-zero gradient into a
  # visible weight difference (as much as lr), which says nothing about the sharding.
  trainer = Trainer(graphdef, mesh, OptimConfig(learning_rate=1e-2, warmup_steps=0, eps=1e-6))
  state = trainer.init(params)
  packed = batching.pack(_examples(), 24)
  batch = next(batching.iterate_batches(packed.batch, 8, 1, seed=0))
  state, metrics = trainer.step(state, batch)
  new_params = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  return logits, samples, {k: float(v) for k, v in metrics.items()}, new_params, state


@pytest.fixture(scope="module")
def reference():
  return _run((1, 1, 1))


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_equals_unsharded(reference, shape):
  ref_logits, ref_samples, ref_metrics, ref_params, _ = reference
  logits, samples, metrics, params, state = _run(shape)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(samples, ref_samples)
  for k in ref_metrics:
    assert metrics[k] == pytest.approx(ref_metrics[k], rel=1e-5, abs=1e-6), k
  # Updated weights within 1% of one step's size (lr 1e-2); measured: at most 7e-5.
  for a, b in zip(params, ref_params):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  # With fsdp/tensor axes the parameters really are spread over the mesh; pure data
  # parallelism (8,1,1) replicates them.
  leaves = jax.tree.leaves(state.params)
  spread = any(not x.sharding.is_fully_replicated for x in leaves)
  assert spread == (shape[1] * shape[2] > 1)


def test_gptj_sharded_equals_unsharded():
  ref_logits, ref_samples, ref_metrics, _, _ = _run((1, 1, 1), "tiny-gptj")
  logits, samples, metrics, _, _ = _run((2, 2, 2), "tiny-gptj")
  np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(samples, ref_samples)
  assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-5)


def test_make_mesh_fills_minus_one_and_rejects_bad_shapes():
  mesh = sharding.make_mesh((2, -1, 1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert dict(sharding.make_mesh({"tensor": 2, "data": -1}).shape) == {
      "data": 4, "fsdp": 1, "tensor": 2}
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh((3, 4, 1))
  with pytest.raises(ValueError, match="at most one"):
    sharding.make_mesh((-1, -1, 1))
  with pytest.raises(ValueError, match="unknown mesh axes"):
    sharding.make_mesh({"model": 2})


def test_make_mesh_lays_devices_out_by_topology():
  # The device order is jax.make_mesh's (mesh_utils: TPU/GPU topology), over any device subset.
  for shape, devices in (((2, 2, 2), jax.devices()), ((1, 2, 2), jax.devices()[4:])):
    mesh = sharding.make_mesh(shape, devices=devices)
    ref = jax.make_mesh(shape, sharding.MESH_AXES, devices=devices)
    assert [d.id for d in mesh.devices.flat] == [d.id for d in ref.devices.flat]
    assert mesh.axis_names == sharding.MESH_AXES


def test_rules_drop_mesh_axes_that_do_not_divide():
  mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
  # 3 KV heads cannot split over tensor=2: that dimension stays whole.
  assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (576, 3, 64),
                                  mesh_shape) == PartitionSpec("fsdp", None, None)
  assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (576, 4, 64),
                                  mesh_shape) == PartitionSpec("fsdp", "tensor", None)
  assert sharding.logical_to_spec(("batch", None), (8, 5),
                                  mesh_shape) == PartitionSpec(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("batch", None), (2, 5),
                                  mesh_shape) == PartitionSpec("data", None)


def test_trainer_rejects_batch_not_dividing_mesh():
  mesh = mesh_of((8, 1, 1))
  graphdef, params = params_lib.init_params(get_preset("tiny"), mesh)
  trainer = Trainer(graphdef, mesh, OptimConfig())
  state = trainer.init(params)
  batch = {k: np.zeros((1, 4, 16), np.int32) for k in BATCH_KEYS}
  with pytest.raises(ValueError, match="multiple of the mesh's 8 batch shards"):
    trainer.step(state, batch)
