"""Every STaR iteration reuses the compiled train step and sampler: a run extended from one
iteration to three compiles nothing more, though iterations 2 and 3 train for other numbers of
steps on a decaying schedule."""

from helpers.runs import load_config
from star_jax import star
from star_jax.engine import params, trainer
from star_jax.runtime import compiling
from star_jax.sampling import sampler


def _compiles(config, workdir):
  before = len(compiling.COMPILED)
  metrics = star.run(config, workdir)
  assert all(m["train_steps"] > 0 for m in metrics[1:])  # every iteration trained
  return [what for what, _ in compiling.COMPILED[before:]]


def test_iterations_after_the_first_compile_nothing(tmp_path):
  for cache in (trainer._STEP_FNS, sampler._FNS, params._CREATORS):
    cache.clear()
  trainer._OPT_INITS.clear()
  config = load_config("arithmetic")
  config.star.steps_schedule, config.train.schedule = "exponential", "linear"  # new horizons
  config.star.base_steps, config.star.steps_growth = 5, 1.5  # 5, 8, 11 steps
  config.pretrain.steps = 80
  config.star.iterations = 1
  workdir = str(tmp_path / "run")
  one = _compiles(config, workdir)
  assert sum("train step" in w for w in one) == 1  # pretraining's shape too
  assert any("decode" in w or "sample" in w for w in one), one
  config.star.iterations = 3
  assert _compiles(config, workdir) == []
