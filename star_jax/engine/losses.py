"""What a train step minimises: a loss chosen per step function.

A loss turns one micro-batch into ``(summed loss, its share of the denominator, summed
metrics)``. The train step adds these over its micro-batches and divides once at the end, so
accumulating k micro-batches equals one batch k times larger whatever the loss, and every
loss states its own denominator instead of the trainer assuming a token count:

  CrossEntropy    supervised fine-tuning (STaR, its controls, the warm start): the masked
                  completion tokens' cross-entropy over their count
  DPO             direct preference optimisation's sigmoid loss over (chosen, rejected) row
                  pairs against a frozen reference (TRL's ``loss_type="sigmoid"``): a
                  verifier trained on STaR's right and wrong samples (V-STaR)
  PolicyGradient  the clipped surrogate of GRPO (DeepSeekMath, arXiv 2402.03300; the formula
                  of TRL's ``GRPOTrainer._compute_loss``) with an optional k3 KL penalty to a
                  frozen reference, normalised per sequence (``"sequence"``: TRL's
                  ``loss_type="grpo"``), by a constant (``"constant"``: Dr. GRPO, arXiv
                  2503.20783, TRL's ``"dr_grpo"``) or by the tokens (``"token"``: TRL's
                  ``"bnpo"``, verl's token-mean)

Each loss names the batch keys it reads; the trainer checks and shards exactly those. Losses
are frozen dataclasses: hashable, so a loss is part of the compiled step's key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from star_jax.engine.decoder import causal_mask, head_logits
from star_jax.engine.positions import segment_starts

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")

# Most float32 logits a loss holds at once (64 MiB); longer micro-batches are chunked.
LOGITS_CHUNK_ELEMENTS = 1 << 24

NORMALIZATIONS = ("sequence", "constant", "token")


def hidden(model, micro: dict[str, jax.Array], key: jax.Array | None = None) -> jax.Array:
  """The decoder's last hidden states ``[B, L, D]`` of a micro-batch.

  With a position scheme the positions come from the tokens (restarting in every packed
  segment), and ``key`` draws whatever the scheme randomises in training (None: the
  sampler's positions); without one they are the batch's ``positions``.
  """
  mask_BxLxL = causal_mask(micro["segment_ids"])
  positions = micro["positions"]
  if model.cfg.positions is not None:
    positions = model.cfg.positions.of_tokens(micro["tokens"],
                                              segment_starts(micro["segment_ids"]), key)
  h_BxLxD, _ = model(micro["tokens"], positions, mask_BxLxL)
  return h_BxLxD


def loss_sums(model, micro: dict[str, jax.Array],
              key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Summed masked cross-entropy and the number of masked tokens of one micro-batch."""
  h_BxLxD = hidden(model, micro, key)
  weight_BxL = micro["loss_mask"].astype(jnp.float32)
  total = xent_sum(h_BxLxD, *model.head(h_BxLxD.dtype), micro["targets"], weight_BxL,
                   softcap=model.cfg.final_softcap)
  return total, jnp.sum(weight_BxL)


def _xent(h_BxCxD, w_DxV, bias_V, targets_BxC, weight_BxC, softcap=None) -> jax.Array:
  logits_BxCxV = head_logits(h_BxCxD, w_DxV, bias_V, softcap)
  xent_BxC = optax.softmax_cross_entropy_with_integer_labels(logits_BxCxV, targets_BxC)
  return jnp.sum(xent_BxC * weight_BxC)


def _chunks(B: int, L: int, V: int) -> int:
  """How many sequence chunks keep each chunk's ``[B, L / n, V]`` logits under the limit."""
  need = -(-B * L * V // LOGITS_CHUNK_ELEMENTS)
  return 1 if need <= 1 else next(k for k in range(need, L + 1) if L % k == 0)


def xent_sum(h_BxLxD, w_DxV, bias_V, targets_BxL, weight_BxL, softcap=None) -> jax.Array:
  """Summed weighted cross-entropy of the head's logits, never a ``[B, L, V]`` float32 buffer
  above ``LOGITS_CHUNK_ELEMENTS``: the sequence is cut in chunks, each chunk's logits made
  (and, under ``jax.checkpoint``, remade in the backward pass) one chunk at a time."""
  B, L = targets_BxL.shape
  n = _chunks(B, L, w_DxV.shape[1])
  if n == 1:
    return _xent(h_BxLxD, w_DxV, bias_V, targets_BxL, weight_BxL, softcap)
  split = lambda x: jnp.moveaxis(x.reshape(B, n, L // n, *x.shape[2:]), 1, 0)
  body = jax.checkpoint(lambda total, xs: (total + _xent(xs[0], w_DxV, bias_V, *xs[1:],
                                                         softcap=softcap), None))
  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                          (split(h_BxLxD), split(targets_BxL), split(weight_BxL)))
  return total


def token_logprobs(h_BxLxD, w_DxV, bias_V, targets_BxL, temperature: float = 1.0,
                   softcap=None) -> tuple[jax.Array, jax.Array]:
  """(log-probability of each target, entropy of each position's distribution), ``[B, L]``
  each, of the head's logits divided by ``temperature`` (the distribution the sampler drew
  from, as TRL scores it); chunked as ``xent_sum`` is."""
  def stats(h_BxCxD, targets_BxC):
    logits_BxCxV = head_logits(h_BxCxD, w_DxV, bias_V, softcap) / temperature
    logp_BxCxV = jax.nn.log_softmax(logits_BxCxV, axis=-1)
    logp_BxC = jnp.take_along_axis(logp_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]
    entropy_BxC = -jnp.sum(jnp.exp(logp_BxCxV) * logp_BxCxV, axis=-1)
    return logp_BxC, jax.lax.stop_gradient(entropy_BxC)

  B, L = targets_BxL.shape
  n = _chunks(B, L, w_DxV.shape[1])
  if n == 1:
    return stats(h_BxLxD, targets_BxL)
  split = lambda x: jnp.moveaxis(x.reshape(B, n, L // n, *x.shape[2:]), 1, 0)
  body = jax.checkpoint(lambda carry, xs: (carry, stats(*xs)))
  _, (logp_NxBxC, entropy_NxBxC) = jax.lax.scan(body, None, (split(h_BxLxD), split(targets_BxL)))
  merge = lambda x: jnp.moveaxis(x, 0, 1).reshape(B, L)
  return merge(logp_NxBxC), merge(entropy_NxBxC)


def segment_sums(x_BxL: jax.Array, segment_ids_BxL: jax.Array) -> jax.Array:
  """Each token's sum of ``x`` over its row's segment (the tokens of its row with its segment
  id), ``[B, L]``."""
  B, L = x_BxL.shape
  ids_BxL = segment_ids_BxL + (L + 1) * jnp.arange(B)[:, None]
  sums = jax.ops.segment_sum(x_BxL.reshape(-1), ids_BxL.reshape(-1), num_segments=B * (L + 1))
  return sums[ids_BxL]


@dataclasses.dataclass(frozen=True)
class CrossEntropy:
  """Supervised fine-tuning: summed cross-entropy of the masked tokens over their count.
  ``jitter``: at the positions a position scheme draws from the step's key (its training
  jitter), or (False) at the sampler's."""

  jitter: bool = True

  name = "cross_entropy"
  batch_keys = BATCH_KEYS

  def __call__(self, model, micro, key=None):
    total, count = loss_sums(model, micro, key if self.jitter else None)
    return total, count, {"tokens": count}


@dataclasses.dataclass(frozen=True)
class PolicyGradient:
  """The clipped policy-gradient surrogate over completion tokens (``loss_mask``), one
  advantage per token (``advantages``, ``[B, L]``: its sequence's; or ``[B]``, one a row), as
  TRL's GRPO loss computes it:

    ratio_t = exp(logp_t - old_t)        old = logp itself, detached (mu = 1: ratio 1), or the
                                         batch's ``old_logprobs`` (mu > 1 inner updates)
    loss_t  = -min(ratio_t A, clip(ratio_t, 1 - clip_low, 1 + clip_high) A)
              + kl_beta (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)     (k3 estimator)

  summed with per-token weights and divided by ``normalize``'s denominator: "sequence" (each
  sequence's mean, then the mean over the step's sequences: TRL's "grpo"), "constant" (the
  step's sequences times ``max_completion``: Dr. GRPO) or "token" (the step's completion
  tokens). A sequence is a row's segment (``segment_ids``), so packed rows score the same.

  Positions: with ``jitter`` (as ``CrossEntropy``'s) a position scheme that draws them in
  training (the arithmetic task's line/column jitter) draws them from the step's key, and
  ``old_logprobs`` and ``ref_logprobs`` must come from the same key (``Trainer.logprobs(...,
  step=)``). Without (``jitter=False``, or no such scheme) they are the sampler's, and
  ``logp`` is the log-probability the sampler drew each token with, at its temperature: the
  samples are on-policy in their positions too. Measured on the arithmetic default, GRPO at
  jittered positions drifts from M_0 by a median k3 KL of 9-1,455 nats a token a block
  (0.004-0.11 at the sampler's) and G = 8 collapsed (docs/variants.md). The metrics are token means: KL to the reference
  (with ``ref_logprobs``), the policy's entropy, and the share of tokens the clip holds.
  """

  temperature: float = 1.0
  clip_low: float = 0.2
  clip_high: float = 0.2
  kl_beta: float = 0.0
  normalize: str = "sequence"
  max_completion: int = 0
  jitter: bool = False  # a position scheme's training jitter (True), or the sampler's positions
  old_logprobs: bool = False  # the batch carries the sampling policy's log-probs (mu > 1)
  ref_logprobs: bool = False  # the batch carries the reference's (kl_beta > 0, or KL logged)

  name = "policy_gradient"

  def __post_init__(self):
    if self.normalize not in NORMALIZATIONS:
      raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
    if self.normalize == "constant" and self.max_completion < 1:
      raise ValueError("normalize='constant' needs max_completion >= 1")
    if self.kl_beta and not self.ref_logprobs:
      raise ValueError("kl_beta > 0 needs the reference's log-probs (ref_logprobs=True)")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return (BATCH_KEYS + ("advantages",) + (("old_logprobs",) if self.old_logprobs else ())
            + (("ref_logprobs",) if self.ref_logprobs else ()))

  def __call__(self, model, micro, key=None):
    h_BxLxD = hidden(model, micro, key if self.jitter else None)
    logp_BxL, entropy_BxL = token_logprobs(h_BxLxD, *model.head(h_BxLxD.dtype), micro["targets"],
                                           self.temperature, model.cfg.final_softcap)
    return self.terms(logp_BxL, micro, entropy_BxL)

  def terms(self, logp_BxL, micro, entropy_BxL=None):
    """The loss's sums from the policy's per-token log-probs (differentiated through)."""
    mask_BxL = micro["loss_mask"].astype(jnp.float32)
    adv = micro["advantages"].astype(jnp.float32)
    adv_BxL = adv if adv.ndim == 2 else adv[:, None]  # each token's, or each row's
    old_BxL = (micro["old_logprobs"] if self.old_logprobs
               else jax.lax.stop_gradient(logp_BxL))
    ratio_BxL = jnp.exp(logp_BxL - old_BxL)
    clipped_BxL = jnp.clip(ratio_BxL, 1 - self.clip_low, 1 + self.clip_high)
    per_token_BxL = -jnp.minimum(ratio_BxL * adv_BxL, clipped_BxL * adv_BxL)
    sums = {}
    if self.ref_logprobs:
      d_BxL = micro["ref_logprobs"] - logp_BxL
      kl_BxL = jnp.exp(d_BxL) - d_BxL - 1
      if self.kl_beta:
        per_token_BxL = per_token_BxL + self.kl_beta * kl_BxL
      sums["kl"] = jnp.sum(jax.lax.stop_gradient(kl_BxL) * mask_BxL)
    # each token's share of its sequence (packed rows hold several: their segments)
    segments_BxL = micro.get("segment_ids", (mask_BxL > 0).astype(jnp.int32))
    share_BxL = mask_BxL / jnp.maximum(segment_sums(mask_BxL, segments_BxL), 1.0)
    sequences = jnp.round(jnp.sum(share_BxL))  # those with a completion token
    if self.normalize == "sequence":
      weight_BxL, denom = share_BxL, sequences
    elif self.normalize == "constant":
      weight_BxL, denom = mask_BxL, sequences * self.max_completion
    else:
      weight_BxL, denom = mask_BxL, jnp.sum(mask_BxL)
    held = (((ratio_BxL < 1 - self.clip_low) & (adv_BxL < 0))
            | ((ratio_BxL > 1 + self.clip_high) & (adv_BxL > 0)))
    sums["clip_fraction"] = jnp.sum(jax.lax.stop_gradient(held.astype(jnp.float32)) * mask_BxL)
    if entropy_BxL is not None:
      sums["entropy"] = jnp.sum(entropy_BxL * mask_BxL)
    sums["tokens"] = jnp.sum(mask_BxL)
    return jnp.sum(per_token_BxL * weight_BxL), denom, sums


@dataclasses.dataclass(frozen=True)
class DPO:
  """Direct preference optimisation's sigmoid loss (Rafailov et al. 2023; TRL's
  ``DPOTrainer`` with ``loss_type="sigmoid"``): rows come in pairs, row 2i the chosen and row
  2i + 1 the rejected completion of one prompt, each scored by its summed completion-token
  log-probability (``loss_mask``) less the frozen reference's (``ref_logprobs``):

    loss = -log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r)))    a mean over the pairs

  The metrics are pair means: the implicit rewards beta (pi - ref) of the chosen and the
  rejected, their margin, and the share of pairs the policy orders right (``accuracy``).
  """

  beta: float = 0.1

  name = "dpo"
  batch_keys = BATCH_KEYS + ("ref_logprobs",)
  counts = ("tokens", "pairs")  # reported as counts; the other metrics are means per pair
  per = {"accuracy": "pairs", "margin": "pairs", "chosen_reward": "pairs",
         "rejected_reward": "pairs"}

  def __call__(self, model, micro, key=None):
    h_BxLxD = hidden(model, micro)
    logp_BxL, _ = token_logprobs(h_BxLxD, *model.head(h_BxLxD.dtype), micro["targets"], 1.0,
                                 model.cfg.final_softcap)
    return self.terms(logp_BxL, micro)

  def terms(self, logp_BxL, micro):
    """The loss's sums from the policy's per-token log-probs (differentiated through)."""
    mask_BxL = micro["loss_mask"].astype(jnp.float32)
    score_B = jnp.sum((logp_BxL - micro["ref_logprobs"]) * mask_BxL, axis=-1)
    score_Px2 = score_B.reshape(-1, 2)
    real_P = jnp.all(jnp.sum(mask_BxL, axis=-1).reshape(-1, 2) > 0, axis=-1).astype(jnp.float32)
    delta_P = score_Px2[:, 0] - score_Px2[:, 1]
    loss_P = -jax.nn.log_sigmoid(self.beta * delta_P)
    stop = jax.lax.stop_gradient
    sums = {"tokens": jnp.sum(mask_BxL), "pairs": jnp.sum(real_P),
            "accuracy": jnp.sum((stop(delta_P) > 0) * real_P),
            "margin": jnp.sum(self.beta * stop(delta_P) * real_P),
            "chosen_reward": jnp.sum(self.beta * stop(score_Px2[:, 0]) * real_P),
            "rejected_reward": jnp.sum(self.beta * stop(score_Px2[:, 1]) * real_P)}
    return jnp.sum(loss_P * real_P), jnp.sum(real_P), sums


def metric_means(loss, sums: dict) -> dict:
  """A step's metrics from a loss's summed ones: its counts as they are (``loss.counts``;
  "tokens" by default), every other one divided by its count (``loss.per``; "tokens")."""
  counts = getattr(loss, "counts", ("tokens",))
  per = getattr(loss, "per", {})
  out = {k: sums[k] for k in counts if k in sums}
  out.update({k: v / jnp.maximum(sums[per.get(k, "tokens")], 1.0)
              for k, v in sums.items() if k not in counts})
  return out


CROSS_ENTROPY = CrossEntropy()


def step_keys(step, micro_batches: int) -> jax.Array:
  """The ``[M]`` keys a train step at ``step`` hands its micro-batches' losses (a position
  scheme's random gaps): a function of the step number, so a resumed run draws what an
  uninterrupted one drew, and a forward pass outside the step can draw the same."""
  return jax.random.split(jax.random.fold_in(jax.random.key(0), step), micro_batches)


def logprobs_of(model, batch: dict[str, jax.Array], temperature: float,
                keys: jax.Array | None = None) -> jax.Array:
  """Per-token log-probabilities ``[M, B, L]`` of a batch's targets under ``model``: at the
  sampler's positions, or with ``keys`` (``step_keys``) at those the train step of that
  number draws: the reference's (or the sampling policy's) for ``PolicyGradient``."""
  def one(xs):
    micro, key = xs
    h_BxLxD = hidden(model, micro, key)
    return token_logprobs(h_BxLxD, *model.head(h_BxLxD.dtype), micro["targets"], temperature,
                          model.cfg.final_softcap)[0]
  if keys is None:
    return jax.lax.map(lambda micro: one((micro, None)), {k: batch[k] for k in BATCH_KEYS})
  return jax.lax.map(one, ({k: batch[k] for k in BATCH_KEYS}, keys))
