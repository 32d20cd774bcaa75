"""Memory planning without the hardware: compile a program for abstract arrays and read what
XLA says one device needs, next to what its parts take by their shapes and shardings.

Nothing of model size is allocated: parameters are ``jax.ShapeDtypeStruct``s carrying their
``NamedSharding`` (``nnx.eval_shape`` builds the model), and ``jit(...).lower(...).compile()``
does buffer assignment for them. The compiled figures are per device: arguments, outputs,
temporaries, and their sum less what donated arguments give back to the outputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from star_jax.engine import params as params_lib, sharding
from star_jax.engine.model_config import ModelConfig
from star_jax.engine.optim import OptimConfig
from star_jax.engine.trainer import BATCH_KEYS, Trainer
from star_jax.runtime.compiling import memory_need, out_of_device_memory

GIB = 2 ** 30
# A refused program's note. Its figures are what the compiler reported on refusing, which can be
# far above what the program needs (Qwen3-8B's train step on v4-8: 54.1 GiB refused, 33.3
# compiled for the same mesh of larger v5p chips): the overshoot says "no", not by how much.
REFUSED = ("; the compiler refused it: out of device memory (the figures are its report on "
           "refusing, an upper estimate: plan the same mesh on a larger chip for the layout)")


@dataclasses.dataclass
class ProgramPlan:
  """One compiled program's per-device needs, in bytes."""
  what: str
  compile_s: float
  need: dict[str, int]  # arguments, outputs, temporaries, aliased, total (XLA's figures)
  parts: dict[str, int]  # what the bytes are for: parameters, optimizer state, ... activations
  derived: str  # how the parts not read off shapes were derived
  # Bytes one device receives from collectives (all-gather, all-reduce, ...): "once" in the
  # program's entry, "per loop iteration" in its loop bodies (a decode step, a micro-batch).
  collectives: dict[str, int] = dataclasses.field(default_factory=dict)
  # The compiler's cost analysis, per device: {"flops", "bytes accessed"} of one pass of the
  # work ``cost_unit`` names (XLA counts a loop body once, so a loop's figures are one step's).
  cost: dict[str, float] = dataclasses.field(default_factory=dict)
  cost_unit: str = ""
  cost_note: str = ""  # how the cost was had when not directly (or why there is none)

  def dominant(self) -> str:
    return max(self.parts, key=self.parts.get)

  def overshoot(self, budget: int) -> int:
    """Bytes per device above ``budget`` (<= 0: it fits), or above what the compiler said the
    device offers where it refused the program."""
    capacity = self.need.get("capacity")
    return self.need["total"] - (min(budget, capacity) if capacity else budget)

  def as_dict(self, budget: int) -> dict[str, Any]:
    return {"what": self.what, "compile_s": round(self.compile_s, 2),
            **{k: _gib(v) for k, v in self.need.items()},
            "parts": {k: _gib(v) for k, v in self.parts.items()}, "derived": self.derived,
            "fits": self.overshoot(budget) <= 0, "overshoot": _gib(max(self.overshoot(budget), 0)),
            "dominant": self.dominant(),
            "collectives": {k: _gib(v) for k, v in self.collectives.items()},
            "cost": dict(self.cost), "cost_unit": self.cost_unit, "cost_note": self.cost_note}


def _gib(n: int) -> float:
  return round(n / GIB, 9)  # to the byte


def abstract_params(cfg: ModelConfig, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
  """The decoder's structure and its parameters as shapes on their shardings."""
  graphdef, abstract = params_lib.abstract_model(cfg)
  shardings = params_lib.param_shardings(abstract, mesh)
  return graphdef, jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def shard_bytes(x, dtype=None) -> int:
  """Bytes of one device's shard of an abstract array (in ``dtype`` if given); the largest
  shard when they differ (they do not for the evenly dividing shardings used here)."""
  shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
  return math.prod(shape) * np.dtype(dtype or x.dtype).itemsize


def tree_bytes(tree, dtype=None) -> int:
  """Per-device bytes of every abstract array in ``tree``."""
  return sum(shard_bytes(x, dtype) for x in jax.tree.leaves(tree))


_COLLECTIVE = re.compile(r"= (\([^=]*?\)|\S+) (all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute)(-start)?\(")
_SHAPE = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Result bytes of the collectives of a compiled module's text (XLA's per-device program):
  ``once`` in the entry computation, ``per loop iteration`` in every other computation (loop
  bodies, once per iteration; a loop nested in a loop counts once, not per inner step)."""
  out = {"once": 0, "per loop iteration": 0}
  entry = False
  for line in hlo_text.splitlines():
    if line.endswith("{") and not line.startswith(" "):  # a computation begins
      entry = line.startswith("ENTRY")
      continue
    m = _COLLECTIVE.search(line)
    if m is None:
      continue
    size = 0
    for dtype, dims in _SHAPE.findall(m.group(1)):
      n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
      size += n * (1 if dtype == "pred" else int(re.sub(r"\D", "", dtype)) // 8)
    out["once" if entry else "per loop iteration"] += size
  return out


# The TPU compiler splits a matmul whose operand is gathered (or whose result is scattered)
# across the mesh into a loop of partial matmuls that overlaps the collective (a "windowed
# einsum"), and cost analysis counts a loop body once: a loop-free cost compile of Llama-3-8B's
# step on v4-32 counted 0.63 x the model's FLOPs with them. The cost compiles turn them off; the
# work is the same, done after the collective.
COST_COMPILER_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                         "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def cost_compiler_options(mesh: Mesh) -> dict[str, Any] | None:
  """The compiler options of a cost compile for ``mesh``'s devices (TPU's; none elsewhere)."""
  return COST_COMPILER_OPTIONS if mesh.devices.flat[0].platform == "tpu" else None


def loops_in(exe) -> int:
  """While loops in a compiled program (a loop-free cost compile should have none)."""
  return len(re.findall(r"\bwhile\(", exe.as_text()))


def compile_program(jitted, args, what: str, mesh: Mesh,
                    compiler_options: dict[str, Any] | None = None
                    ) -> tuple[Any | None, float, dict[str, int]]:
  """Lowers and compiles ``jitted`` for abstract ``args``: (executable, seconds, need).

  A program the compiler refuses for want of device memory comes back as (None, seconds,
  need) with the compiler's figures: ``total`` what it would use, ``capacity`` what the
  device offers, ``arguments`` read off ``args``, the rest as temporaries.
  """
  t0 = time.perf_counter()
  try:
    with jax.set_mesh(mesh):
      exe = jitted.lower(*args).compile(compiler_options=compiler_options)
  except Exception as e:  # jax's runtime error; only the device-memory refusal is handled
    refusal = out_of_device_memory(e)
    if refusal is None:
      raise
    size, capacity, kind = refusal
    arguments = sum(tree_bytes(a) for a in args if a is not None)
    temporaries = size if kind == "temporaries" else max(size - arguments, 0)
    return None, time.perf_counter() - t0, {
        "arguments": arguments, "outputs": 0, "temporaries": temporaries, "aliased": 0,
        "total": arguments + temporaries, "capacity": capacity}
  seconds = time.perf_counter() - t0
  need = memory_need(exe)
  if not need:
    raise RuntimeError(f"XLA gives no memory analysis for {what} on this backend")
  return exe, seconds, need


def cost_of(exe) -> dict[str, float]:
  """FLOPs and bytes accessed per device from the compiler's cost analysis ({} if it has none)."""
  try:
    cost = exe.cost_analysis()
  except Exception:  # some backends do not implement it
    return {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {k: float(cost[k]) for k in ("flops", "bytes accessed") if cost and k in cost}


def plan_train_step(graphdef: nnx.GraphDef, params: nnx.State, mesh: Mesh, optim: OptimConfig,
                    shape: tuple[int, int, int], master_dtype: str = "float32",
                    cost: bool = False, cost_layers: bool = False) -> ProgramPlan:
  """The train step (``shape`` = micro-batches, rows, tokens) of the trainer the loop uses.

  Parameters (the trained ones' masters, in ``master_dtype``, and any frozen rest) and
  optimizer state are read off their shapes and shardings; gradients are one micro-batch's
  gradients plus, over several micro-batches, the float32 accumulator the step carries (a
  single micro-batch has none), laid out like the parameters; activations are XLA's
  temporaries less those gradients: the layers' saved activations, the logits chunks and the
  update's scratch.
  """
  trainer = Trainer(graphdef, mesh, optim, master_dtype=master_dtype)
  state = trainer.abstract_state(params)
  jitted = trainer.jitted_step(params_lib.shardings_of(state), shape)
  batch = {k: jax.ShapeDtypeStruct(shape, np.int32, sharding=trainer.batch_sharding(shape))
           for k in BATCH_KEYS}
  sched = {k: jax.ShapeDtypeStruct((), np.float32) for k in optim.schedule_args()}
  what = f"train step ({shape[0]} micro-batches of {shape[1]} x {shape[2]} tokens)"
  exe, seconds, need = compile_program(jitted, (state, trainer.frozen, batch, sched), what, mesh)
  refused = REFUSED if exe is None else ""
  trained = state.params  # the masters of what trains (all, or the LoRA adapters)
  # One micro-batch's gradients, plus the float32 accumulator when there are several.
  grads = tree_bytes(trained) + (tree_bytes(trained, np.float32) if shape[0] > 1 else 0)
  parts = {"parameters": tree_bytes(trained) + tree_bytes(trainer.frozen),
           "optimizer state": tree_bytes(state.opt_state),
           "gradients": grads, "activations": max(need["temporaries"] - grads, 0)}
  plan = ProgramPlan(what, seconds, need, parts,
                     "gradients = one micro-batch's gradients (+ a float32 accumulator over "
                     "several; parameter shapes and shardings); activations = temporaries - "
                     "gradients" + refused,
                     collective_bytes(exe.as_text()) if exe is not None else {})
  if cost and exe is not None:
    plan.cost, plan.cost_note = micro_batch_cost(graphdef, params, mesh, optim, shape,
                                                 master_dtype, layers=cost_layers)
    plan.cost_unit = "micro-batch"
  return plan


def micro_batch_cost(graphdef: nnx.GraphDef, params: nnx.State, mesh: Mesh, optim: OptimConfig,
                     shape: tuple[int, int, int], master_dtype: str, direct: bool = True,
                     layers: bool = False) -> tuple[dict[str, float], str]:
  """The compiler's FLOPs and bytes of one micro-batch's step, from a loop-free compile, and a
  note saying how they were had when not directly ("" when they were).

  XLA's cost analysis counts a loop body once, so the step is compiled again without loops:
  one micro-batch (every one does the same work), layers unrolled (``scan_layers`` off) and the
  loss's logits in one piece (no chunk loop). Its memory is not the run's; its work is. When
  the compiler refuses that compile for want of device memory (the whole micro-batch's logits
  at once; or ``direct=False``), the cost is fitted as a + b x rows through loop-free compiles
  of one and two rows a device, and extrapolated to the micro-batch's rows: the step's work is
  per row but for the update and the parameters' gathers, which do not depend on the rows.
  With ``layers`` (a model whose layers are all alike), the cost is fitted as a + b x layers
  through copies of the model with 1 and 2 layers: the compiles a slice of many chips takes
  in host memory (a 64-chip, 32-layer step: more than 20 GiB) shrink to a layer's.
  """
  cfg = params_lib.merge(graphdef, params).cfg  # abstract leaves: nothing is allocated
  cfg = cfg.replace(scan_layers=False)
  if not (layers and layers_alike(cfg)):
    return _rows_cost(cfg, mesh, optim, shape, master_dtype, direct)
  (c1, _), (c2, note) = (_rows_cost(with_layers(cfg, n), mesh, optim, shape, master_dtype,
                                    direct) for n in (1, 2))
  if not (c1 and c2):
    return {}, note
  return (line_through(c1, 1, c2, 2, cfg.num_layers),
          "extrapolated from loop-free compiles of 1 and 2 layers" + (f"; {note}" if note else ""))


def layers_alike(cfg: ModelConfig) -> bool:
  """Whether a cost may be fitted as a + b x layers: more than two layers, all of one kind."""
  return cfg.num_layers > 2 and len(set(cfg.layer_types)) <= 1


def with_layers(cfg: ModelConfig, n: int) -> ModelConfig:
  """A copy of ``cfg`` with its first ``n`` layers: what a layer fit compiles."""
  return cfg.replace(num_layers=n, layer_types=cfg.layer_types[:n])


def _rows_cost(cfg: ModelConfig, mesh: Mesh, optim: OptimConfig, shape: tuple[int, int, int],
               master_dtype: str, direct: bool) -> tuple[dict[str, float], str]:
  """micro_batch_cost for an unscanned ``cfg``: the micro-batch directly, or fitted in rows."""
  from star_jax.engine import losses as losses_lib
  graphdef, params = abstract_params(cfg, mesh)
  chunk, losses_lib.LOGITS_CHUNK_ELEMENTS = losses_lib.LOGITS_CHUNK_ELEMENTS, 1 << 62
  try:
    trainer = Trainer(graphdef, mesh, optim, master_dtype=master_dtype)
    state = trainer.abstract_state(params)
    loops: list[int] = []  # while loops left in each cost compile that has any

    def loop_free(rows: int) -> dict[str, float]:
      one = (1, rows, shape[2])
      jitted = trainer.jitted_step(params_lib.shardings_of(state), one)
      batch = {k: jax.ShapeDtypeStruct(one, np.int32, sharding=trainer.batch_sharding(one))
               for k in BATCH_KEYS}
      sched = {k: jax.ShapeDtypeStruct((), np.float32) for k in optim.schedule_args()}
      exe, _, _ = compile_program(jitted, (state, trainer.frozen, batch, sched),
                                  "train step (cost)", mesh, cost_compiler_options(mesh))
      if exe is None:
        return {}
      n = loops_in(exe)
      if n:
        loops.append(n)
      return cost_of(exe)

    rows, per_device = shape[1], sharding.batch_divisor(mesh)
    cost = loop_free(rows) if direct else {}
    if cost:
      return cost, _loops_note(loops)
    refused = (f"the loop-free compile of {rows} rows was refused for want of device memory"
               if direct else f"not compiled at {rows} rows")
    r1, r2 = per_device, 2 * per_device
    if rows <= r2:
      return {}, refused
    c1, c2 = loop_free(r1), loop_free(r2)
    if not (c1 and c2):
      return {}, f"{refused}, and at {r1} and {r2} rows too"
    return (line_through(c1, r1, c2, r2, rows),
            f"extrapolated from loop-free compiles of {r1} and {r2} rows ({refused})"
            + (f"; {_loops_note(loops)}" if loops else ""))
  finally:
    losses_lib.LOGITS_CHUNK_ELEMENTS = chunk


def line_through(c1: dict[str, float], x1: float, c2: dict[str, float], x2: float, x: float
                 ) -> dict[str, float]:
  """Each figure of two costs, measured at x1 and x2, on the line through them at x."""
  return {k: c1[k] + (c2[k] - c1[k]) * (x - x1) / (x2 - x1) for k in c1 if k in c2}


def _loops_note(loops: list[int]) -> str:
  return (f"its compile still has {max(loops)} loops, each counted once: the count is low"
          if loops else "")
