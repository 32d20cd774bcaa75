"""Training memory: a real-shaped step fits, one that cannot fit says so before it runs."""

import jax
import numpy as np
import pytest

from star_jax.engine import batching, params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import LOGITS_CHUNK_ELEMENTS, Trainer, loss_sums, xent_sum
from star_jax.runtime import compiling

_GIB = 2 ** 30


def _real_shaped(mesh, seq_len=1024, rows=2, accum=2):
  """SmolLM2's vocabulary and CQA's row length on a 2-layer model: the logits are what hurt."""
  cfg = get_preset("tiny", vocab_size=49152, max_seq_len=seq_len)
  graphdef, params = params_lib.init_params(cfg, mesh, seed=0)
  rng = np.random.default_rng(0)
  examples = [batching.TrainExample(rng.integers(3, 49152, 100).tolist(),
                                    rng.integers(3, 49152, 150).tolist()) for _ in range(16)]
  packed = batching.pack(examples, seq_len)
  batch = next(batching.iterate_batches(packed.batch, rows, 1, seed=0, grad_accum=accum))
  return cfg, graphdef, params, batch


def test_chunked_cross_entropy_equals_the_whole_one(mesh1):
  cfg, graphdef, params, batch = _real_shaped(mesh1, seq_len=512, rows=2, accum=1)
  model = params_lib.merge(graphdef, params)
  micro = {k: jax.numpy.asarray(v[0]) for k, v in batch.items()}
  h, _ = model(micro["tokens"], micro["positions"],
               jax.numpy.ones((2, 512, 512), bool) & jax.numpy.tril(
                   jax.numpy.ones((512, 512), bool)))
  w = micro["loss_mask"]
  assert 2 * 512 * cfg.vocab_size > LOGITS_CHUNK_ELEMENTS  # really chunked
  chunked = xent_sum(h, *model.head(h.dtype), micro["targets"], w)
  import optax
  whole = (optax.softmax_cross_entropy_with_integer_labels(model.logits(h), micro["targets"])
           * w).sum()
  np.testing.assert_allclose(float(chunked), float(whole), rtol=1e-5)
  g_chunked = jax.grad(lambda h: xent_sum(h, *model.head(h.dtype), micro["targets"], w))(h)
  g_whole = jax.grad(lambda h: (optax.softmax_cross_entropy_with_integer_labels(
      model.logits(h), micro["targets"]) * w).sum())(h)
  np.testing.assert_allclose(np.asarray(g_chunked), np.asarray(g_whole), atol=1e-6)


def test_a_real_shaped_step_fits_in_its_memory_budget(mesh1, monkeypatch):
  cfg, graphdef, params, batch = _real_shaped(mesh1)
  monkeypatch.setattr(compiling, "device_memory_bytes", lambda device=None: 1 * _GIB)
  trainer = Trainer(graphdef, mesh1, OptimConfig(learning_rate=1e-3, warmup_steps=0))
  state, metrics = trainer.step(trainer.init(params), batch)  # compiled under a 1 GiB budget
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1


def test_a_step_that_cannot_fit_fails_before_it_runs_with_the_numbers(mesh1, monkeypatch):
  cfg, graphdef, params, batch = _real_shaped(mesh1)
  monkeypatch.setattr(compiling, "device_memory_bytes", lambda device=None: _GIB // 8)
  # (another optimizer than the test above: a step compiled there would not compile again)
  trainer = Trainer(graphdef, mesh1, OptimConfig(learning_rate=1e-3, warmup_steps=0, b2=0.99))
  state = trainer.init(params)
  with pytest.raises(MemoryError, match=r"train step .* needs [0-9.]+ GiB per device .*"
                                        r"temporaries .* has 0.1 GiB available; use more"):
    trainer.step(state, batch)
  assert int(state.step) == 0  # nothing ran: the state was not donated away


def test_a_refused_loop_free_cost_compile_is_fitted_from_smaller_micro_batches(monkeypatch):
  """The roofline's cost comes from a loop-free compile of a whole micro-batch; where the
  compiler refuses it (an 8B model's logits in one piece on 16 GiB chips), the cost is fitted
  as a + b x rows through one and two rows a device; with ``layers``, as a + b x layers
  through 1- and 2-layer copies. Either fit matches the direct compile."""
  from conftest import mesh_of
  from star_jax.engine import memory
  mesh = mesh_of((1, 2, 1))  # fsdp=2: the batch splits in 2
  cfg = get_preset("tiny", vocab_size=256, max_seq_len=128, num_layers=4)
  graphdef, params = memory.abstract_params(cfg.replace(scan_layers=True), mesh)
  optim, shape = OptimConfig(learning_rate=1e-3), (1, 8, 128)
  direct, note = memory.micro_batch_cost(graphdef, params, mesh, optim, shape, "float32")
  assert note == "" and direct["flops"] > 0
  fitted, note = memory.micro_batch_cost(graphdef, params, mesh, optim, shape, "float32",
                                         direct=False)
  assert note.startswith("extrapolated from loop-free compiles of 2 and 4 rows")
  # measured on v5e:2x2: FLOPs 0.08% and bytes 0.5% from the direct compile's
  assert fitted["flops"] == pytest.approx(direct["flops"], rel=0.01)
  assert fitted["bytes accessed"] == pytest.approx(direct["bytes accessed"], rel=0.05)
  by_layers, note = memory.micro_batch_cost(graphdef, params, mesh, optim, shape, "float32",
                                            layers=True)
  assert note == "extrapolated from loop-free compiles of 1 and 2 layers"
  assert by_layers["flops"] == pytest.approx(direct["flops"], rel=0.01)
  assert by_layers["bytes accessed"] == pytest.approx(direct["bytes accessed"], rel=0.05)

  real, refuse_from = memory.compile_program, [8]  # rows the "compiler" refuses, as libtpu did

  def refusing(jitted, args, what, mesh, options=None):
    if args[2]["tokens"].shape[1] >= refuse_from[0]:
      return None, 0.0, {}
    return real(jitted, args, what, mesh, options)
  monkeypatch.setattr(memory, "compile_program", refusing)
  cost, note = memory.micro_batch_cost(graphdef, params, mesh, optim, shape, "float32")
  assert cost == fitted and "the loop-free compile of 8 rows was refused" in note
  refuse_from[0] = 4  # 4 rows refused: no two smaller micro-batches to fit through
  cost, note = memory.micro_batch_cost(graphdef, params, mesh, optim, (1, 4, 128), "float32")
  assert cost == {} and note == ("the loop-free compile of 4 rows was refused for want of "
                                 "device memory")
  refuse_from[0] = 2  # even one row a device refused
  cost, note = memory.micro_batch_cost(graphdef, params, mesh, optim, shape, "float32")
  assert cost == {} and note.endswith("and at 2 and 4 rows too")
