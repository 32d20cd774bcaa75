"""Every STaR iteration reuses the compiled train step and sampler: three iterations compile
what one does, though each trains for another number of steps on a decaying schedule."""

from helpers.runs import load_config
from star_jax import star
from star_jax.engine import params, trainer
from star_jax.runtime import compiling
from star_jax.sampling import sampler


def _compiles(config, workdir):
  for cache in (trainer._STEP_FNS, sampler._FNS, params._CREATORS):
    cache.clear()
  trainer._OPT_INITS.clear()
  before = len(compiling.COMPILED)
  metrics = star.run(config, workdir)
  assert all(m["train_steps"] > 0 for m in metrics[1:])  # every iteration trained
  return [what for what, _ in compiling.COMPILED[before:]]


def test_three_iterations_compile_what_one_does(tmp_path):
  config = load_config("arithmetic")
  config.star.steps_schedule, config.train.schedule = "exponential", "linear"  # new horizons
  config.star.base_steps, config.star.steps_growth = 5, 1.5  # 5, 8, 11 steps
  config.pretrain.steps = 80
  config.star.iterations = 1
  one = _compiles(config, str(tmp_path / "one"))
  config.star.iterations = 3
  three = _compiles(config, str(tmp_path / "three"))
  assert sorted(one) == sorted(three)
  assert sum("train step" in w for w in three) == 1  # pretraining's shape too
