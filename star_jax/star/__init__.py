"""The STaR loop: run config and defaults, experiment build, rollout, keep, finetune, the
phases of an iteration, workdir artifacts, report and plots. ``run`` is the entry point."""

from star_jax.star.loop import run

__all__ = ["run"]
