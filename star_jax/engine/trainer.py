"""Fine-tuning: optax AdamW with warmup, schedule and clipping, and a jitted train step.

A batch holds ``[M, B, L]`` arrays (M micro-batches for gradient accumulation). What the
step minimises is the trainer's ``loss`` (losses.py: cross-entropy by default, GRPO's policy
gradient for the RL methods): each micro-batch contributes its summed loss, gradient and
share of the loss's denominator, and one division happens at the end, so accumulating k
micro-batches equals one batch k times larger.

What trains is ``lora.partition(params)[0]``: every parameter, or with LoRA the adapters
alone; the frozen rest is an argument of the step, neither differentiated nor donated.

Mixed precision: the train state holds *master* weights (``master_dtype``, float32 by
default) and Adam's moments in that dtype; each step casts the masters to the model's own
parameter dtype (e.g. bfloat16) before building the model, so the forward and backward run
as the sampler runs while gradients, moments and updates stay float32. At lr 1e-6 an update
is far below bfloat16's spacing (~1e-4 near |w| ~ 0.02): all-bfloat16 training rounds it away.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from star_jax.engine import lora, sharding
from star_jax.engine.losses import (BATCH_KEYS, CROSS_ENTROPY, LOGITS_CHUNK_ELEMENTS,  # noqa: F401
                                    logprobs_of, loss_sums, metric_means, step_keys,
                                    xent_sum)
from star_jax.engine.precision import as_masters, cast_leaves, dtype_names
from star_jax.engine.optim import OptimConfig, learning_rate, make_optimizer
from star_jax.engine.params import merge, shardings_of
from star_jax.engine.train_state import TrainState
from star_jax.runtime.compiling import CompileOnFirstCall, program_cache

def train_step(graphdef, optim: OptimConfig, compute_dtypes: tuple[str, ...] | None, loss,
               state: TrainState, frozen, batch: dict[str, jax.Array],
               schedule_args: dict[str, jax.Array]):
  """One optimizer update from ``[M, B, L]`` micro-batches; returns (state, metrics).

  ``state.params`` are the trained parameters, ``frozen`` the rest of the model (empty
  without LoRA): gradients, and so Adam's moments, exist for the trained ones only.

  ``optim`` gives the schedule's kind and Adam's constants; the rate and the schedule's
  numbers come in ``schedule_args`` (arrays), so they can change without a recompile.
  ``compute_dtypes`` (one per parameter) is what the masters are cast to before the model
  is built: differentiating through the cast gives gradients in the masters' dtype. Cast
  while still sharded, the FSDP all-gathers move compute-dtype bytes.

  ``loss(model, micro, key)`` gives (summed loss, denominator share, summed metrics); the
  metrics are reported as means over the step's counts (``losses.metric_means``).
  """
  tx = make_optimizer(optim)

  def micro_grads(params, micro, key):
    def f(p):
      model = merge(graphdef, cast_leaves(p, compute_dtypes), frozen)
      total, denom, sums = loss(model, micro, key)
      return total, (denom, sums)
    (total, (denom, sums)), grads = jax.value_and_grad(f, has_aux=True)(params)
    return (total, denom, sums), grads

  def body(carry, xs):
    micro, key = xs
    sums, grads = micro_grads(state.params, micro, key)
    acc_sums, acc_grads = carry
    return (jax.tree.map(jnp.add, acc_sums, sums), jax.tree.map(jnp.add, acc_grads, grads)), None

  # Randomness of a step (a position scheme's random gaps) is a function of the step number:
  # a resumed run draws what an uninterrupted one drew.
  M = batch["tokens"].shape[0]
  keys = step_keys(state.step, M)
  if M == 1:  # no float32 accumulator beside the gradients: 4 bytes a parameter less
    (total, denom, sums), grads = micro_grads(state.params, jax.tree.map(lambda x: x[0], batch),
                                              keys[0])
  else:
    first = jax.tree.map(lambda x: x[0], batch)
    shapes = jax.eval_shape(lambda: micro_grads(state.params, first, keys[0])[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
    grad_zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), state.params)
    ((total, denom, sums), grads), _ = jax.lax.scan(body, (zeros, grad_zeros), (batch, keys))
  denom = jnp.maximum(denom, 1e-9)
  grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  lr = learning_rate(optim.schedule, schedule_args, state.step)
  updates = jax.tree.map(lambda u: u * (-lr).astype(u.dtype), updates)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": total / denom, "grad_norm": grad_norm, "learning_rate": lr,
             **metric_means(loss, sums)}
  return TrainState(state.step + 1, params, opt_state), metrics


# Compiled steps shared by every Trainer with the same structure, optimizer, mesh and
# shapes: the STaR loop builds a fresh Trainer each iteration without recompiling.
_STEP_FNS: dict = program_cache("trainer")


_OPT_INITS: dict = program_cache("optimizer_init")


def _opt_init(optim: OptimConfig, params: nnx.State):
  """The jitted optimizer init for parameters of this layout. Its outputs are laid out
  explicitly: left to sharding propagation, Adam's zeros (which depend on no input value)
  come out replicated, every device holding all of mu and nu."""
  p_shard = shardings_of(params)
  key = (optim.static(), sharding.tree_key(p_shard))
  if key not in _OPT_INITS:
    tx = make_optimizer(optim.static())
    rep = sharding.replicated(jax.tree.leaves(p_shard)[0].mesh)
    out = optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, params), p_shard,
                                transform_non_params=lambda _: rep)
    _OPT_INITS[key] = jax.jit(tx.init, out_shardings=out)
  return _OPT_INITS[key]


class Trainer:
  """Owns the optimizer and the jitted, sharded, donating train step.

  ``master_dtype`` ("float32", "bfloat16", "float16"; "" = the parameters' own) is the dtype
  of the weights and Adam moments the train state holds; the model computes in the dtype of
  the parameters given to ``init``, and ``model_params`` hands the masters back in it,
  rounded as ``rounding`` says ("stochastic" from ``rounding_seed``, or "nearest").
  ``loss`` (losses.py) is what the step minimises and which batch keys it reads.
  """

  def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh, optim: OptimConfig,
               master_dtype: str = "float32", rounding: str = "stochastic",
               rounding_seed: int = 0, loss=CROSS_ENTROPY):
    self.graphdef, self.mesh, self.optim = graphdef, mesh, optim
    self.loss = loss  # what the step minimises (losses.py): its batch keys, its denominator
    self.master_dtype = master_dtype
    # How the masters become the model's own dtype when training hands the model back
    # (precision.cast_leaves); each step's forward pass casts to the nearest value.
    self.rounding, self.rounding_seed = rounding, rounding_seed
    self.compute_dtypes: tuple[str, ...] | None = None  # set by init: None = the state's own
    self.frozen = nnx.State({})  # what init found not to train (LoRA: the base model)

  def init(self, params: nnx.State, copy: bool = False) -> TrainState:
    """The state of what trains (all ``params``, or their LoRA adapters): master weights cast
    from it (its dtypes are what the model computes in) and optimizer state laid out like
    them (mu and nu take their shardings and dtype); the rest is kept frozen.

    The step donates the state: ``copy`` makes sure it holds no array of ``params``.
    """
    trained, masters = self._masters(params)
    if copy:  # copy what the cast did not already make anew
      masters = jax.tree.map(lambda m, p: jnp.copy(m) if m is p else m, masters, trained)
    with jax.set_mesh(self.mesh):
      opt_state = _opt_init(self.optim, masters)(masters)
      step = jax.device_put(np.zeros((), np.int32), sharding.replicated(self.mesh))
    return TrainState(step, masters, opt_state)

  def _masters(self, params: nnx.State) -> tuple[nnx.State, nnx.State]:
    """(what trains, its masters): sets the frozen rest and the dtypes the step computes in."""
    trained, self.frozen = lora.partition(params)
    model_dtypes = dtype_names(trained)
    masters = as_masters(trained, self.master_dtype)
    self.compute_dtypes = model_dtypes if dtype_names(masters) != model_dtypes else None
    return trained, masters

  def model_params(self, state: TrainState, masters: bool = False) -> nnx.State:
    """The whole model: the trained weights in the model's own dtypes (the sampler's copy),
    or as the masters they are, with the frozen rest."""
    params = state.params if masters else cast_leaves(state.params, self.compute_dtypes,
                                                      self.rounding, self.rounding_seed)
    return self._whole(params)

  def forward_params(self, state: TrainState) -> nnx.State:
    """The whole model as the step's forward pass computes with it (the masters cast to the
    nearest value of the model's dtypes): what a loss's ``old_logprobs`` are taken from."""
    return self._whole(cast_leaves(state.params, self.compute_dtypes))

  def _whole(self, trained: nnx.State) -> nnx.State:
    return lora.join(trained, self.frozen) if jax.tree.leaves(self.frozen) else trained

  def state_shardings(self, state: TrainState) -> TrainState:
    return shardings_of(state)

  def batch_sharding(self, shape):
    return sharding.named(self.mesh, (None, "batch") + (None,) * (len(shape) - 2), shape)

  def abstract_state(self, params: nnx.State) -> TrainState:
    """The shapes and shardings ``init`` would give for (abstract) ``params``, allocating
    nothing: the optimizer's init is compiled, not run, and its output layout read off."""
    _, masters = self._masters(params)
    # Outside the mesh: optax builds its state's layout by calling init eagerly, which would
    # run on the mesh's devices (a TPU topology's, when planning for one, cannot run anything).
    init = _opt_init(self.optim, masters)
    with jax.set_mesh(self.mesh):
      opt_state = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          jax.eval_shape(init, masters), init.lower(masters).compile().output_shardings)
    step = jax.ShapeDtypeStruct((), np.int32, sharding=sharding.replicated(self.mesh))
    return TrainState(step, masters, opt_state)

  def jitted_step(self, state_shardings: TrainState, shape) -> Any:
    """The jitted (not yet compiled) step for ``[M, B, L]`` batches and this state layout
    (after ``init`` or ``abstract_state``: its arguments are the state, the frozen rest,
    the batch and the schedule's numbers)."""
    check_batch_shape(self.mesh, shape)
    b_shard = {k: self.batch_sharding(shape) for k in self.loss.batch_keys}
    rep = sharding.replicated(self.mesh)
    return jax.jit(
        functools.partial(train_step, self.graphdef, self.optim.static(), self.compute_dtypes,
                          self.loss),
        in_shardings=(state_shardings, shardings_of(self.frozen), b_shard, rep),
        out_shardings=(state_shardings, rep), donate_argnums=(0,))

  def step(self, state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict]:
    """Runs one update. ``state`` is donated: use the returned one from here on."""
    missing = set(self.loss.batch_keys) - set(batch)
    if missing:
      raise ValueError(f"batch lacks {sorted(missing)}")
    shape = tuple(batch["tokens"].shape)
    check_batch_shape(self.mesh, shape)
    st_shard = self.state_shardings(state)
    static = self.optim.static()  # the rate and schedule's numbers are arguments
    fr_shard = shardings_of(self.frozen)
    key = (self.graphdef, static, self.compute_dtypes, self.loss, self.mesh, shape,
           sharding.tree_key(st_shard), sharding.tree_key(fr_shard))
    fn = _STEP_FNS.get(key)
    rep = sharding.replicated(self.mesh)
    if fn is None:
      fn = CompileOnFirstCall(
          self.jitted_step(st_shard, shape),
          f"the train step ({shape[0]} micro-batches of {shape[1]} x {shape[2]} tokens)",
          hint="use more micro-batches of fewer rows, or shorter rows")
      _STEP_FNS[key] = fn
    batch = {k: jax.device_put(batch[k], self.batch_sharding(np.shape(batch[k])))
             for k in self.loss.batch_keys}
    args = {k: jax.device_put(v, rep) for k, v in self.optim.schedule_args().items()}
    with jax.set_mesh(self.mesh):
      return fn(state, self.frozen, batch, args)

  def logprobs(self, params: nnx.State, batch: dict[str, Any], temperature: float,
               step: int | None = None) -> jax.Array:
    """Per-token log-probabilities ``[M, B, L]`` of ``batch``'s targets under the whole model
    ``params`` (a reference model, or ``forward_params(state)`` before an update) at
    ``temperature``: what ``PolicyGradient`` reads as ``ref_logprobs`` or ``old_logprobs``.
    Positions are the sampler's, or with ``step`` those the train step at that step number
    draws (the same for a position scheme that draws them: ``positions.draws_positions``)."""
    shape = tuple(np.shape(batch["tokens"]))
    check_batch_shape(self.mesh, shape)
    p_shard = shardings_of(params)
    keyed = step is not None
    key = ("logprobs", self.graphdef, self.mesh, shape, float(temperature), keyed,
           sharding.tree_key(p_shard))
    fn = _STEP_FNS.get(key)
    rep = sharding.replicated(self.mesh)
    if fn is None:
      b_shard = {k: self.batch_sharding(shape) for k in BATCH_KEYS}
      fn = jax.jit(lambda p, b, s: logprobs_of(merge(self.graphdef, p), b, temperature,
                                               step_keys(s, shape[0]) if keyed else None),
                   in_shardings=(p_shard, b_shard, rep), out_shardings=self.batch_sharding(shape))
      _STEP_FNS[key] = fn
    put = {k: jax.device_put(batch[k], self.batch_sharding(shape)) for k in BATCH_KEYS}
    s = jax.device_put(np.asarray(0 if step is None else step, np.int32), rep)
    with jax.set_mesh(self.mesh):
      return fn(params, put, s)


def check_batch_shape(mesh: Mesh, shape) -> None:
  """A step's batch is ``[micro_batches, rows, length]``, its rows split evenly over the
  mesh's batch shards; anything else is refused before compiling."""
  if len(shape) != 3:
    raise ValueError(f"batch arrays must be [micro_batches, batch, length], got {tuple(shape)}")
  div = sharding.batch_divisor(mesh)
  if shape[1] % div:
    raise ValueError(f"batch size {shape[1]} must be a multiple of the mesh's {div} batch "
                     "shards")
