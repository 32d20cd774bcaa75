"""Fine-tuning: optax AdamW with warmup, schedule and clipping, and a jitted train step.

A batch holds ``[M, B, L]`` arrays (M micro-batches for gradient accumulation).
The loss is a token-weighted mean over *all* M·B·L masked tokens: each micro-batch
contributes its summed loss and gradient and one division happens at the end,
so accumulating k micro-batches equals one batch k times larger.

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
from star_jax.engine.precision import as_masters, cast_leaves, dtype_names
from star_jax.engine.decoder import causal_mask, head_logits
from star_jax.engine.optim import OptimConfig, learning_rate, make_optimizer
from star_jax.engine.params import merge, shardings_of
from star_jax.engine.positions import segment_starts
from star_jax.engine.train_state import TrainState
from star_jax.runtime.compiling import CompileOnFirstCall

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


def loss_sums(model, micro: dict[str, jax.Array],
              key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed masked cross-entropy and the number of masked tokens of one micro-batch.

  With a position scheme the positions come from the tokens (restarting in every packed
  segment), and ``key`` draws whatever the scheme randomises in training; without it
  they are laid out as the sampler lays them out.
  """
  mask_BxLxL = causal_mask(micro["segment_ids"])
  positions = micro["positions"]
  if model.cfg.positions is not None:
    positions = model.cfg.positions.of_tokens(micro["tokens"],
                                              segment_starts(micro["segment_ids"]), key)
  h_BxLxD, _ = model(micro["tokens"], positions, mask_BxLxL)
  weight_BxL = micro["loss_mask"].astype(jnp.float32)
  total = xent_sum(h_BxLxD, *model.head(h_BxLxD.dtype), micro["targets"], weight_BxL,
                   softcap=model.cfg.final_softcap)
  return total, jnp.sum(weight_BxL)


# Most float32 logits the loss holds at once (64 MiB); longer micro-batches are chunked.
LOGITS_CHUNK_ELEMENTS = 1 << 24


def _xent(h_BxCxD, w_DxV, bias_V, targets_BxC, weight_BxC, softcap=None) -> jax.Array:
  logits_BxCxV = head_logits(h_BxCxD, w_DxV, bias_V, softcap)
  xent_BxC = optax.softmax_cross_entropy_with_integer_labels(logits_BxCxV, targets_BxC)
  return jnp.sum(xent_BxC * weight_BxC)


def xent_sum(h_BxLxD, w_DxV, bias_V, targets_BxL, weight_BxL, softcap=None) -> jax.Array:
  """Summed weighted cross-entropy of the head's logits, never a ``[B, L, V]`` float32 buffer
  above ``LOGITS_CHUNK_ELEMENTS``: the sequence is cut in chunks, each chunk's logits made
  (and, under ``jax.checkpoint``, remade in the backward pass) one chunk at a time."""
  B, L = targets_BxL.shape
  need = -(-B * L * w_DxV.shape[1] // LOGITS_CHUNK_ELEMENTS)
  if need <= 1:
    return _xent(h_BxLxD, w_DxV, bias_V, targets_BxL, weight_BxL, softcap)
  n = next(k for k in range(need, L + 1) if L % k == 0)  # chunks that tile the sequence
  split = lambda x: jnp.moveaxis(x.reshape(B, n, L // n, *x.shape[2:]), 1, 0)
  body = jax.checkpoint(lambda total, xs: (total + _xent(xs[0], w_DxV, bias_V, *xs[1:],
                                                         softcap=softcap), None))
  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                          (split(h_BxLxD), split(targets_BxL), split(weight_BxL)))
  return total


def train_step(graphdef, optim: OptimConfig, compute_dtypes: tuple[str, ...] | None,
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
  """
  tx = make_optimizer(optim)

  def micro_grads(params, micro, key):
    def f(p):
      model = merge(graphdef, cast_leaves(p, compute_dtypes), frozen)
      total, count = loss_sums(model, micro, key)
      return total, count
    (total, count), grads = jax.value_and_grad(f, has_aux=True)(params)
    return total, count, grads

  def body(carry, xs):
    micro, key = xs
    total, count, grads = micro_grads(state.params, micro, key)
    acc_total, acc_count, acc_grads = carry
    return (acc_total + total, acc_count + count,
            jax.tree.map(jnp.add, acc_grads, grads)), None

  # Randomness of a step (a position scheme's random gaps) is a function of the step number:
  # a resumed run draws what an uninterrupted one drew.
  M = batch["tokens"].shape[0]
  keys = jax.random.split(jax.random.fold_in(jax.random.key(0), state.step), M)
  if M == 1:  # no float32 accumulator beside the gradients: 4 bytes a parameter less
    total, count, grads = micro_grads(state.params, jax.tree.map(lambda x: x[0], batch), keys[0])
  else:
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), state.params)
    (total, count, grads), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros), (batch, keys))
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  lr = learning_rate(optim.schedule, schedule_args, state.step)
  updates = jax.tree.map(lambda u: u * (-lr).astype(u.dtype), updates)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": total / denom, "tokens": count, "grad_norm": grad_norm,
             "learning_rate": lr}
  return TrainState(state.step + 1, params, opt_state), metrics


# Compiled steps shared by every Trainer with the same structure, optimizer, mesh and
# shapes: the STaR loop builds a fresh Trainer each iteration without recompiling.
_STEP_FNS: dict = {}


_OPT_INITS: dict = {}


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
  """

  def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh, optim: OptimConfig,
               master_dtype: str = "float32", rounding: str = "stochastic",
               rounding_seed: int = 0):
    self.graphdef, self.mesh, self.optim = graphdef, mesh, optim
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
    return lora.join(params, self.frozen) if jax.tree.leaves(self.frozen) else params

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
    b_shard = {k: self.batch_sharding(shape) for k in BATCH_KEYS}
    rep = sharding.replicated(self.mesh)
    return jax.jit(
        functools.partial(train_step, self.graphdef, self.optim.static(), self.compute_dtypes),
        in_shardings=(state_shardings, shardings_of(self.frozen), b_shard, rep),
        out_shardings=(state_shardings, rep), donate_argnums=(0,))

  def step(self, state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict]:
    """Runs one update. ``state`` is donated: use the returned one from here on."""
    missing = set(BATCH_KEYS) - set(batch)
    if missing:
      raise ValueError(f"batch lacks {sorted(missing)}")
    shape = tuple(batch["tokens"].shape)
    check_batch_shape(self.mesh, shape)
    st_shard = self.state_shardings(state)
    static = self.optim.static()  # the rate and schedule's numbers are arguments
    fr_shard = shardings_of(self.frozen)
    key = (self.graphdef, static, self.compute_dtypes, self.mesh, shape,
           sharding.tree_key(st_shard), sharding.tree_key(fr_shard))
    fn = _STEP_FNS.get(key)
    rep = sharding.replicated(self.mesh)
    if fn is None:
      fn = CompileOnFirstCall(
          self.jitted_step(st_shard, shape),
          f"the train step ({shape[0]} micro-batches of {shape[1]} x {shape[2]} tokens)",
          hint="use more micro-batches of fewer rows, or shorter rows")
      _STEP_FNS[key] = fn
    batch = {k: jax.device_put(batch[k], self.batch_sharding(shape)) for k in BATCH_KEYS}
    args = {k: jax.device_put(v, rep) for k, v in self.optim.schedule_args().items()}
    with jax.set_mesh(self.mesh):
      return fn(state, self.frozen, batch, args)


def check_batch_shape(mesh: Mesh, shape) -> None:
  """A step's batch is ``[micro_batches, rows, length]``, its rows split evenly over the
  mesh's batch shards; anything else is refused before compiling."""
  if len(shape) != 3:
    raise ValueError(f"batch arrays must be [micro_batches, batch, length], got {tuple(shape)}")
  div = sharding.batch_divisor(mesh)
  if shape[1] % div:
    raise ValueError(f"batch size {shape[1]} must be a multiple of the mesh's {div} batch "
                     "shards")
