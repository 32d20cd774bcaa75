"""The decoder's building blocks below attention: parameters, projections with their LoRA
adapters, norms and the MLP.

Kernels are stored ``[in, ..., out]`` with logical axis names for sharding; with
``cfg.lora_rank`` the targeted ones get an ``nnx.LoRA`` adapter ``<kernel>_lora`` beside
them (engine/lora.py trains, saves and folds those).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from star_jax.engine.model_config import ModelConfig
from star_jax.engine.sharding import constrain


def param(rngs: nnx.Rngs, init, shape, dtype, axes) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, dtype), axes=axes)


def dense(x_BxTxI: jax.Array, w_Ix___: jax.Array, in_dims: int = 1) -> jax.Array:
  """``x @ w`` over the last ``in_dims`` axes of x and the first of w, as one 2-D matmul.

  Rows are flattened to ``[B*T, I]`` first: with two contracting axes (batch and
  sequence) in the backward pass, XLA:CPU ran the 3-D form ~1.5x slower
  (docs/benchmarks.md).
  """
  lead, feat = x_BxTxI.shape[:-in_dims], x_BxTxI.shape[-in_dims:]
  out_shape = w_Ix___.shape[in_dims:]
  x_RxI = x_BxTxI.reshape(-1, math.prod(feat))
  y_RxO = x_RxI @ w_Ix___.reshape(math.prod(feat), -1)
  return y_RxO.reshape(*lead, *out_shape)


def _adapter(cfg: ModelConfig, rngs: nnx.Rngs, name: str, in_axis: str, out_axis: str
             ) -> nnx.LoRA | None:
  """Flax's LoRA module for kernel ``name`` (its ``[in, ..., out]`` seen as 2-D), or None.

  A's input axis and B's output axis shard like the kernel's leading input / output
  axis (a flattened ``(N, H)`` splits where N would); the rank stays whole. Adapters
  are float32 whatever the model's dtype: tiny, and bfloat16 would round small updates away.
  """
  shapes = cfg.lora_shapes()  # the targets this block type has
  if name not in shapes:
    return None
  fan_in, fan_out = shapes[name]
  return nnx.LoRA(fan_in, cfg.lora_rank, fan_out, dtype=cfg.jnp_dtype, param_dtype=jnp.float32,
                  rngs=rngs, a_metadata={"axes": (in_axis, None)},
                  b_metadata={"axes": (None, out_axis)})


def project(module: nnx.Module, name: str, x_BxTxI: jax.Array, in_dims: int = 1) -> jax.Array:
  """``x @ module.<name>`` in x's dtype, plus ``scale * x @ A @ B`` where it has an adapter."""
  y = dense(x_BxTxI, getattr(module, name)[...].astype(x_BxTxI.dtype), in_dims)
  lora = getattr(module, f"{name}_lora", None)
  if lora is None:
    return y
  x_RxI = x_BxTxI.reshape(-1, math.prod(x_BxTxI.shape[-in_dims:]))
  delta_RxO = lora(x_RxI) * module.lora_scale
  return y + delta_RxO.reshape(y.shape).astype(y.dtype)


def add_adapters(module: nnx.Module, cfg: ModelConfig, rngs: nnx.Rngs, axes: dict) -> None:
  """Sets ``<kernel>_lora`` for each targeted kernel of ``axes`` (name -> (in, out) axis)."""
  if not cfg.lora_rank:
    return
  module.lora_scale = cfg.lora_scale
  for name, (in_axis, out_axis) in axes.items():
    lora = _adapter(cfg, rngs, name, in_axis, out_axis)
    if lora is not None:
      setattr(module, f"{name}_lora", lora)


def normal(fan_in: int):
  return jax.nn.initializers.normal(stddev=1.0 / math.sqrt(fan_in))


def norm_scale(cfg: ModelConfig, dim: int) -> nnx.Param:
  """A norm's scale as its checkpoints store it: w of ``x * (1 + w)`` (zeros) with
  ``cfg.norm_plus_one``, else w of ``x * w`` (ones)."""
  init = jnp.zeros if cfg.norm_plus_one else jnp.ones
  return nnx.Param(init((dim,), cfg.jnp_param_dtype), axes=("norm",))


def rms_norm(x_BxTx_: jax.Array, scale_: jax.Array, eps: float, plus_one: bool) -> jax.Array:
  """RMSNorm over the last axis, statistics and scaling in float32 (Gemma's ``(x * w)`` then
  cast; Llama's differs from it only below float32's precision)."""
  x = x_BxTx_.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
  scale = scale_.astype(jnp.float32)
  return (x * (1.0 + scale if plus_one else scale)).astype(x_BxTx_.dtype)


class Norm(nnx.Module):
  """RMSNorm (Llama, Gemma) or LayerNorm with bias (GPT-J); statistics in float32."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    del rngs
    self.rms = cfg.block_type != "gptj"
    self.plus_one = cfg.norm_plus_one
    self.eps = cfg.norm_eps
    self.scale = norm_scale(cfg, cfg.d_model)
    if not self.rms:
      self.bias = nnx.Param(jnp.zeros((cfg.d_model,), cfg.jnp_param_dtype), axes=("norm",))

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    if self.rms:
      return rms_norm(x_BxTxD, self.scale[...], self.eps, self.plus_one)
    x = x_BxTxD.astype(jnp.float32)
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    y = x * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x_BxTxD.dtype)


class MLP(nnx.Module):
  """SwiGLU (Llama), GeGLU with tanh GELU (Gemma) or biased GELU (GPT-J)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    D, F, pd = cfg.d_model, cfg.ffn_dim, cfg.jnp_param_dtype
    self.gated = cfg.block_type != "gptj"
    self.act = "gelu_tanh" if cfg.block_type == "gemma" else "silu"
    if self.gated:
      self.gate = param(rngs, normal(D), (D, F), pd, ("embed", "mlp"))
      self.up = param(rngs, normal(D), (D, F), pd, ("embed", "mlp"))
      self.down = param(rngs, normal(F), (F, D), pd, ("mlp", "embed"))
    else:
      zeros = jax.nn.initializers.zeros
      self.fc_in = param(rngs, normal(D), (D, F), pd, ("embed", "mlp"))
      self.fc_in_bias = param(rngs, zeros, (F,), pd, ("mlp",))
      self.fc_out = param(rngs, normal(F), (F, D), pd, ("mlp", "embed"))
      self.fc_out_bias = param(rngs, zeros, (D,), pd, ("norm",))
    add_adapters(self, cfg, rngs, {"gate": ("embed", "mlp"), "up": ("embed", "mlp"),
                                   "down": ("mlp", "embed"), "fc_in": ("embed", "mlp"),
                                   "fc_out": ("mlp", "embed")})

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    dt = x_BxTxD.dtype
    if self.gated:
      gate_BxTxF = project(self, "gate", x_BxTxD)
      if self.act == "silu":
        g_BxTxF = jax.nn.silu(gate_BxTxF)
      else:
        g_BxTxF = jax.nn.gelu(gate_BxTxF, approximate=True)
      h_BxTxF = g_BxTxF * project(self, "up", x_BxTxD)
      h_BxTxF = constrain(h_BxTxF, ("batch", "seq", "mlp"))
      return project(self, "down", h_BxTxF)
    h_BxTxF = project(self, "fc_in", x_BxTxD) + self.fc_in_bias[...].astype(dt)
    h_BxTxF = constrain(jax.nn.gelu(h_BxTxF, approximate=True), ("batch", "seq", "mlp"))
    return project(self, "fc_out", h_BxTxF) + self.fc_out_bias[...].astype(dt)
