"""Log-likelihood of given continuations: the multiple-choice score (the peers' usual
CommonsenseQA metric picks the choice whose text the model finds likeliest).

Rows are [context, continuation] token lists, left-padded so every continuation ends at
the last position; only the continuation positions' logits are made (never ``[B, T, V]``).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from star_jax.engine import sharding
from star_jax.engine.params import merge, shardings_of
from star_jax.runtime.compiling import program_cache
from star_jax.runtime.distributed import to_host


def _scores(graphdef, params, tokens_BxT, mask_BxT, cont_mask_BxC):
  model = merge(graphdef, params)
  T, C = tokens_BxT.shape[1], cont_mask_BxC.shape[1]
  positions_BxT = jnp.maximum(jnp.cumsum(mask_BxT, axis=-1) - 1, 0)
  causal_TxT = jnp.tril(jnp.ones((T, T), bool))
  h_BxTxD, _ = model(tokens_BxT, positions_BxT, causal_TxT[None] & (mask_BxT[:, None, :] > 0))
  logits_BxCxV = model.logits(h_BxTxD[:, T - C - 1:T - 1])  # position t predicts token t + 1
  logp_BxCxV = jax.nn.log_softmax(logits_BxCxV, axis=-1)
  target_BxC = tokens_BxT[:, T - C:]
  logp_BxC = jnp.take_along_axis(logp_BxCxV, target_BxC[..., None], axis=-1)[..., 0]
  return jnp.sum(logp_BxC * cont_mask_BxC, axis=-1)


_FNS: dict = program_cache("scoring")


def continuation_logprobs(graphdef, mesh, params, contexts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], batch_size: int = 16
                          ) -> np.ndarray:
  """Summed log-probability of each continuation after its context, ``[num_rows]``."""
  if len(contexts) != len(continuations):
    raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
  rows = [(list(c), list(x)) for c, x in zip(contexts, continuations)]
  if any(not x or not c for c, x in rows):
    raise ValueError("every context and continuation needs at least one token")
  div = sharding.batch_divisor(mesh)
  B = max(div, -(-batch_size // div) * div)
  out = np.zeros(len(rows), np.float32)
  p_shard = shardings_of(params)
  for start in range(0, len(rows), B):
    chunk = rows[start:start + B]
    T = -(-max(len(c) + len(x) for c, x in chunk) // 16) * 16
    C = -(-max(len(x) for _, x in chunk) // 4) * 4
    T = max(T, C + 1)
    tokens, mask, cont = (np.zeros((B, T), np.int32), np.zeros((B, T), np.int32),
                          np.zeros((B, C), np.float32))
    for r, (c, x) in enumerate(chunk):
      seq = (c + x)[-T:]
      tokens[r, T - len(seq):], mask[r, T - len(seq):] = seq, 1
      cont[r, C - len(x):] = 1
    key = (graphdef, mesh, B, T, C, sharding.tree_key(p_shard))
    if key not in _FNS:
      batch = lambda shape: sharding.named(mesh, ("batch",) + (None,) * (len(shape) - 1), shape)
      _FNS[key] = jax.jit(functools.partial(_scores, graphdef),
                          in_shardings=(p_shard, batch((B, T)), batch((B, T)), batch((B, C))),
                          out_shardings=batch((B,)))
    put = lambda x: jax.device_put(x, sharding.named(mesh, ("batch",) + (None,) * (x.ndim - 1),
                                                     x.shape))
    with jax.set_mesh(mesh):
      scores = _FNS[key](params, put(tokens), put(mask), put(cont))
    out[start:start + len(chunk)] = to_host(scores)[:len(chunk)]
  return out
