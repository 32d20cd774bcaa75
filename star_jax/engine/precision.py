"""Dtypes of weights: master weights, the copy the model computes with, and how one becomes
the other.

Training holds float32 *masters*; the model samples (and is saved) in its own dtype, e.g.
bfloat16. Rounding a master to the nearest bfloat16 loses every update smaller than half
the spacing there (~6e-5 near |w| ~ 0.02): at the paper's lr 1e-6, a fine-tune of a few
dozen steps moves no sampled weight at all, and M_n samples as M_0. *Stochastic* rounding
(up with probability equal to the distance from the lower neighbour, over the spacing)
keeps the update in expectation, E[round(w)] = w, so the sampled model moves as the masters
do; its noise is no larger than the spacing nearest rounding already costs. The random
draws come from a fixed key: the same masters always give the same copy (a resumed run
samples the model an uninterrupted one did), and weights the fine-tune did not move are
rounded as before.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

ROUNDINGS = ("stochastic", "nearest")


def dtype_names(tree) -> tuple[str, ...]:
  return tuple(str(x.dtype) for x in jax.tree.leaves(tree))


def cast_leaves(tree, dtypes: tuple[str, ...] | None, rounding: str = "nearest",
                seed: int = 0):
  """``tree`` with leaf i cast to ``dtypes[i]`` (None: unchanged); leaves already of their
  dtype are kept as they are (no copy). A floating leaf narrowed to a lower precision is
  rounded to the nearest value, or with ``rounding="stochastic"`` stochastically from a key
  of ``seed`` and the leaf's index."""
  if dtypes is None:
    return tree
  if rounding not in ROUNDINGS:
    raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
  leaves, treedef = jax.tree.flatten(tree)

  def cast(i, x, d):
    if x.dtype == d:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):  # an abstract state (memory plans)
      return jax.ShapeDtypeStruct(x.shape, d, sharding=x.sharding)
    if rounding == "stochastic" and narrows(x.dtype, d):
      return _stochastic_round(x, jax.random.fold_in(jax.random.key(seed), i), np.dtype(d))
    return x.astype(d)
  return jax.tree.unflatten(treedef, [cast(i, x, d)
                                      for i, (x, d) in enumerate(zip(leaves, dtypes))])


def as_masters(tree, master_dtype: str):
  """``tree``'s floating leaves cast to ``master_dtype`` ("" = unchanged)."""
  if not master_dtype:
    return tree
  return cast_leaves(tree, tuple(master_dtype if jnp.issubdtype(d, jnp.floating) else d
                                 for d in dtype_names(tree)))


def narrows(src, dst) -> bool:
  """Whether casting floating ``src`` to floating ``dst`` loses mantissa bits."""
  src, dst = np.dtype(src), np.dtype(dst)
  return (jnp.issubdtype(src, jnp.floating) and jnp.issubdtype(dst, jnp.floating)
          and jnp.finfo(dst).nmant < jnp.finfo(src).nmant)


def stochastic_round(x: jax.Array, dtype, key: jax.Array) -> jax.Array:
  """``x`` in ``dtype``, rounded to one of its two neighbours there: the farther one with
  probability (distance to the nearer) / (distance between them), so E[result] = x.
  Values ``dtype`` holds exactly, infinities and NaNs are cast as they are."""
  near = x.astype(dtype)
  near_x = near.astype(x.dtype)
  toward = jnp.where(near_x < x, jnp.inf, -jnp.inf).astype(dtype)
  far = jnp.nextafter(near, toward)  # the neighbour on x's other side
  gap = far.astype(x.dtype) - near_x
  p_far = jnp.where(jnp.isfinite(gap) & (gap != 0), (x - near_x) / gap, 0.0)
  u = jax.random.uniform(key, x.shape, x.dtype)
  return jnp.where(u < p_far, far, near)


@functools.partial(jax.jit, static_argnums=2)
def _stochastic_round(x, key, dtype):
  return stochastic_round(x, dtype, key)


def half_spacing(w: jax.Array, dtype) -> jax.Array:
  """Half the distance between ``dtype``'s neighbours around |w|: the smallest update that
  rounding to the nearest ``dtype`` value can keep (float32 result)."""
  info = jnp.finfo(dtype)
  a = jnp.maximum(jnp.abs(w.astype(jnp.float32)), float(info.tiny))
  return jnp.exp2(jnp.floor(jnp.log2(a)) - info.nmant - 1)


def share_below_spacing(params, dtype, reach: float) -> float:
  """The share of ``params``' floating weights whose update of at most ``reach`` (e.g. Adam's
  lr x steps) is below half of ``dtype``'s spacing there: weights that rounding to the
  nearest ``dtype`` value would leave exactly where they were."""
  below, total = 0, 0
  for leaf in jax.tree.leaves(params):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      continue
    below += int(jnp.sum(half_spacing(leaf, dtype) > reach))
    total += leaf.size
  return below / max(total, 1)
