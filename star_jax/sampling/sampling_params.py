"""How the next token is picked: greedy, temperature, top-k, top-p (one key per row)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to pick the next token. ``temperature == 0`` is greedy (seed ignored)."""

  temperature: float = 0.0
  top_k: int = 0  # 0: no top-k cut
  top_p: float = 1.0  # 1: no nucleus cut

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0

  def compiled_part(self) -> "SamplingParams":
    """What the sampler compiles in: greedy or not, top-k and top-p. The temperature of a
    sampled call is a runtime value, so one compiled sampler serves every T > 0 (B-STaR's
    probe sweeps several)."""
    return self if self.greedy else dataclasses.replace(self, temperature=1.0)


def pick_tokens(logits_BxV: jax.Array, keys_B: jax.Array, step: jax.Array,
                sp: SamplingParams, temperature: jax.Array | float | None = None) -> jax.Array:
  """Greedy, temperature, top-k and top-p selection, one key per row. ``sp`` says which;
  ``temperature`` (a runtime value; None: ``sp.temperature``) divides the logits."""
  if sp.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)
  logits_BxV = logits_BxV / (sp.temperature if temperature is None else temperature)
  if sp.top_k == 0 and sp.top_p == 1.0:
    return jax.vmap(jax.random.categorical)(step_keys_B, logits_BxV).astype(jnp.int32)
  k = sp.top_k or logits_BxV.shape[-1]
  vals_BxK, ids_BxK = jax.lax.top_k(logits_BxV, min(k, logits_BxV.shape[-1]))
  if sp.top_p < 1.0:
    probs_BxK = jax.nn.softmax(vals_BxK, axis=-1)
    before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
    vals_BxK = jnp.where(before_BxK < sp.top_p, vals_BxK, -jnp.inf)  # keeps the top token
  choice_B = jax.vmap(jax.random.categorical)(step_keys_B, vals_BxK)
  return jnp.take_along_axis(ids_BxK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def logprob(logits_BxV: jax.Array, tokens_B: jax.Array) -> jax.Array:
  logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
  return jnp.take_along_axis(logp_BxV, tokens_B[:, None], axis=-1)[:, 0]
