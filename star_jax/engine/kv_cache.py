"""The decoder's key/value cache, in the layout of its layers.

A decoder whose layers are a Python loop keeps a list of one ``LayerCache`` per layer; one
whose layers run through ``jax.lax.scan`` (``cfg.scan_layers``) keeps one ``StackedCache``
with the layers leading, which the scan reads layer by layer and writes back as its output.
``map_cache`` applies a function of one layer's ``[B, K, S, H]`` arrays to either layout,
so the sampler never needs to know which one it holds.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from star_jax.engine import sharding
from star_jax.engine.model_config import ModelConfig


class LayerCache(NamedTuple):
  k_BxKxSxH: jax.Array
  v_BxKxSxH: jax.Array


class StackedCache(NamedTuple):
  k_LxBxKxSxH: jax.Array
  v_LxBxKxSxH: jax.Array


Cache = Union[list[LayerCache], StackedCache]
KV_AXES = ("batch", "kv_heads", "seq", "head_dim")


def init_cache(cfg: ModelConfig, batch: int, length: int) -> Cache:
  """Zeros for ``batch`` rows of ``length`` slots, in the layout of ``cfg``'s layers."""
  shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
  if cfg.scan_layers:
    stacked = (cfg.num_layers,) + shape
    return StackedCache(jnp.zeros(stacked, cfg.jnp_dtype), jnp.zeros(stacked, cfg.jnp_dtype))
  return [LayerCache(jnp.zeros(shape, cfg.jnp_dtype), jnp.zeros(shape, cfg.jnp_dtype))
          for _ in range(cfg.num_layers)]


def map_cache(fn: Callable[..., jax.Array], cache: Cache, *more: Cache) -> Cache:
  """``fn`` of one layer's ``[B, K, S, H]`` keys (then values) of ``cache`` (and of the same
  layer of ``more`` caches), for every layer; the result keeps the layout."""
  if isinstance(cache, StackedCache):
    per_layer = jax.vmap(fn)
    return StackedCache(per_layer(cache.k_LxBxKxSxH, *(c.k_LxBxKxSxH for c in more)),
                        per_layer(cache.v_LxBxKxSxH, *(c.v_LxBxKxSxH for c in more)))
  return [LayerCache(fn(c.k_BxKxSxH, *(m[i].k_BxKxSxH for m in more)),
                     fn(c.v_BxKxSxH, *(m[i].v_BxKxSxH for m in more)))
          for i, c in enumerate(cache)]


def cache_length(cache: Cache) -> int:
  """S, the cache's slots."""
  if isinstance(cache, StackedCache):
    return cache.k_LxBxKxSxH.shape[3]
  return cache[0].k_BxKxSxH.shape[2]


def cache_shardings(cfg: ModelConfig, mesh: Mesh, batch: int, length: int,
                    rules: Mapping[str, Any] | None = None) -> Cache:
  """The NamedShardings of ``init_cache(cfg, batch, length)``: rows split like the batch,
  kv heads like the attention kernels, the layers whole (under ``rules``, default: those in
  force)."""
  shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
  if cfg.scan_layers:
    one = sharding.named(mesh, ("layers",) + KV_AXES, (cfg.num_layers,) + shape, rules)
    return StackedCache(one, one)
  one = sharding.named(mesh, KV_AXES, shape, rules)
  return [LayerCache(one, one) for _ in range(cfg.num_layers)]
