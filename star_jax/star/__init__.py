"""The STaR algorithm: the outer loop (loop.py), one iteration as Algorithm 1
(iteration.py), the controls as methods (methods.py), M_0 (seed.py), sampling (rollout.py),
filtering (keep.py), fine-tuning (finetune.py) and the metrics record (record.py).
``run`` is the entry point."""

from star_jax.star.loop import run

__all__ = ["run"]
