"""How float32 masters become the model's bfloat16: stochastic rounding keeps updates below
bfloat16's spacing in expectation, nearest rounding loses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.engine import precision, sharding


def _bf16_values(n=512, seed=0):
  x = np.random.default_rng(seed).normal(0, 0.05, n).astype(np.float32)
  return jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32)  # exact in bfloat16


def test_stochastic_rounding_is_unbiased_and_picks_only_the_two_neighbours():
  base = _bf16_values()
  x = base + 3e-5  # below half the spacing of most of them (~6e-5 near 0.02, ~2e-4 near 0.05)
  assert float(jnp.mean(x.astype(jnp.bfloat16).astype(jnp.float32) != base)) < 0.3
  keys = jax.random.split(jax.random.key(0), 4000)
  draws = jax.vmap(lambda k: precision.stochastic_round(x, jnp.bfloat16, k))(keys)
  draws = np.asarray(draws.astype(jnp.float32))
  lo = np.asarray(jnp.nextafter(x.astype(jnp.bfloat16), jnp.bfloat16(-np.inf)), np.float32)
  hi = np.asarray(jnp.nextafter(x.astype(jnp.bfloat16), jnp.bfloat16(np.inf)), np.float32)
  near = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32))
  assert np.all((draws == near) | (draws == lo) | (draws == hi))
  # E[round(x)] = x: the mean of 4,000 draws is within 4 standard errors of x.
  spacing = np.maximum(np.abs(hi - near), np.abs(near - lo))
  np.testing.assert_array_less(np.abs(draws.mean(0) - np.asarray(x)),
                               4 * spacing / 2 / np.sqrt(len(keys)) + 1e-9)


def test_exact_and_special_values_are_cast_as_they_are():
  base = _bf16_values()
  out = precision.stochastic_round(base, jnp.bfloat16, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(base))
  special = jnp.array([np.inf, -np.inf, np.nan, 0.0, -0.0], jnp.float32)
  out = np.asarray(precision.stochastic_round(special, jnp.bfloat16, jax.random.key(2)),
                   np.float32)
  np.testing.assert_array_equal(out[[0, 1, 3, 4]], [np.inf, -np.inf, 0.0, 0.0])
  assert np.isnan(out[2])


def test_cast_leaves_is_a_function_of_the_seed_and_of_nothing_else():
  tree = {"a": _bf16_values(seed=1) + 1e-5, "b": jnp.arange(4), "c": _bf16_values(seed=2)}
  dtypes = ("bfloat16", "int32", "bfloat16")
  one = precision.cast_leaves(tree, dtypes, "stochastic", seed=3)
  again = precision.cast_leaves(tree, dtypes, "stochastic", seed=3)
  other = precision.cast_leaves(tree, dtypes, "stochastic", seed=4)
  assert one["b"] is tree["b"]
  assert [str(x.dtype) for x in jax.tree.leaves(one)] == ["bfloat16", "int32", "bfloat16"]
  np.testing.assert_array_equal(np.asarray(one["a"], np.float32), np.asarray(again["a"],
                                                                             np.float32))
  assert np.any(np.asarray(one["a"], np.float32) != np.asarray(other["a"], np.float32))
  nearest = precision.cast_leaves(tree, dtypes, "nearest")
  np.testing.assert_array_equal(np.asarray(nearest["a"]), np.asarray(tree["a"].astype(
      jnp.bfloat16)))
  with pytest.raises(ValueError, match="rounding must be one of"):
    precision.cast_leaves(tree, dtypes, "up")


def test_a_sharded_leaf_rounds_as_an_unsharded_one():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  x = jnp.asarray(np.random.default_rng(5).normal(0, 0.05, (64, 16)), jnp.float32)
  xs = jax.device_put(x, sharding.named(mesh, ("fsdp", None), x.shape))
  one = precision.cast_leaves({"w": x}, ("bfloat16",), "stochastic", seed=9)["w"]
  many = precision.cast_leaves({"w": xs}, ("bfloat16",), "stochastic", seed=9)["w"]
  assert many.sharding.is_equivalent_to(xs.sharding, 2)
  np.testing.assert_array_equal(np.asarray(one, np.float32), np.asarray(many, np.float32))


def test_half_spacing_and_the_share_an_update_cannot_reach():
  # bfloat16 keeps 7 mantissa bits: spacing 2^-7 at 1.0, 2^-13 at 0.02 (in [2^-6, 2^-5)).
  np.testing.assert_array_equal(precision.half_spacing(jnp.array([1.0, 0.02, -1.5]),
                                                       jnp.bfloat16), [2.0**-8, 2.0**-14, 2.0**-8])
  params = {"w": jnp.array([1.0, 0.02, 0.001, 0.0001]), "i": jnp.arange(3)}
  # reach 1e-5: below 2^-8 (1.0) and 2^-14 (0.02), above 2^-18 (0.001) and 2^-21 (1e-4).
  assert precision.share_below_spacing(params, jnp.bfloat16, 1e-5) == 0.5
  assert precision.narrows("float32", "bfloat16") and not precision.narrows("bfloat16",
                                                                             "float32")
