"""A STaR run with LoRA: it finishes, saves the base once and adapters after, and resumes."""

import os

import jax
import numpy as np

from helpers.runs import load_config, run_results
from star_jax import star
from star_jax.config import load
from star_jax.engine import lora
from star_jax.experiment.build import build
from star_jax.hub.checkpointer import Checkpointer


def _config(iterations):
  config = load_config("arithmetic")
  config.model.lora_rank = 4
  config.train.learning_rate = 3e-3  # adapters start at zero: the smoke's full-FT rate is slow
  config.star.iterations = iterations
  return config


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_lora_star_run_finishes_saves_adapters_and_resumes(tmp_path):
  clean = str(tmp_path / "clean")
  metrics = star.run(_config(2), clean)
  assert [m["iteration"] for m in metrics] == [0, 1, 2]
  assert all(m["train_steps"] > 0 and np.isfinite(m["train_loss"]) for m in metrics[1:])
  assert metrics[0]["pretrain_loss"] < 2.0  # the adapters-only warm start learned something

  ckpt = Checkpointer(os.path.join(clean, "checkpoints"), max_to_keep=None)
  assert ckpt.all_steps() == [0, 1, 2]
  assert ckpt.meta(0)["lora_base"] and ckpt.meta(1)["adapters_on"] == 0
  sizes = [_dir_bytes(os.path.join(clean, "checkpoints", str(n))) for n in (0, 1)]
  assert sizes[1] < 0.5 * sizes[0], sizes
  exp = build(load(_config(2)), clean)
  m1, m2 = (ckpt.restore_model(exp.params, step=n) for n in (1, 2))
  ckpt.close()
  # Every iteration trained its own adapters on one frozen base (restart_from_base).
  for a, b in zip(jax.tree.leaves(lora.split(m1)[1]), jax.tree.leaves(lora.split(m2)[1])):
    np.testing.assert_array_equal(a, b)
  assert not lora.adapters_are_fresh(m1) and not lora.adapters_are_fresh(m2)
  pairs = zip(jax.tree.leaves(lora.split(m1)[0]), jax.tree.leaves(lora.split(m2)[0]))
  assert any(not np.array_equal(a, b) for a, b in pairs)

  # One iteration, then extended to two: M_1 comes back from its adapters checkpoint and
  # samples iteration 2's rationales exactly as in the uninterrupted run.
  extended = str(tmp_path / "extended")
  star.run(_config(1), extended)
  star.run(_config(2), extended)
  assert run_results(extended) == run_results(clean)
