"""Creating, describing and merging the decoder's parameters.

Parameters live as an ``nnx.State`` (``params``) apart from the module's
structure (``graphdef``): jitted functions take ``params`` explicitly with their
shardings, and the sampler and trainer share the very same arrays.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
from flax import nnx
from jax.sharding import Mesh

from star_jax.engine import sharding
from star_jax.engine.decoder import Decoder
from star_jax.engine.model_config import ModelConfig
from star_jax.runtime.compiling import program_cache


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs (with target shardings) mirroring ``tree``."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """Structure and shapes without allocating anything."""
  return nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))))


def param_shardings(abstract_params: nnx.State, mesh: Mesh,
                    rules: Mapping[str, Any] | None = None) -> nnx.State:
  return sharding.state_shardings(abstract_params, mesh, rules)


def init_params(cfg: ModelConfig, mesh: Mesh, seed: int = 0,
                rules: Mapping[str, Any] | None = None) -> tuple[nnx.GraphDef, nnx.State]:
  """Random parameters, each created directly on its target sharding."""
  graphdef, abstract = abstract_model(cfg)
  shardings = param_shardings(abstract, mesh, rules)
  create = _creator(cfg, mesh, sharding.tree_key(shardings), shardings)
  with jax.set_mesh(mesh):
    params = create(jax.random.key(seed))
  return graphdef, params


_CREATORS: dict = program_cache("params_init")


def _creator(cfg, mesh, key, shardings):
  """One compiled initialiser per (config, mesh, layout); the seed is an argument."""
  fn = _CREATORS.get((cfg, mesh, key))
  if fn is None:
    def create(rng):
      return nnx.split(Decoder(cfg, nnx.Rngs(params=rng)))[1]
    fn = _CREATORS[(cfg, mesh, key)] = jax.jit(create, out_shardings=shardings)
  return fn


def merge(graphdef: nnx.GraphDef, params: nnx.State, *more: nnx.State) -> Decoder:
  """The module of ``params`` (and ``more`` partitions of it, e.g. a frozen base)."""
  return nnx.merge(graphdef, params, *more)


def count(params: nnx.State) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def shardings_of(tree) -> Any:
  """The sharding of every array in a (possibly nnx.State) tree, same structure."""
  return jax.tree.map(lambda x: x.sharding, tree)
