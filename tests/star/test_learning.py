"""STaR learns, not only runs: on a tiny problem its iterations lift held-out accuracy.

configs/arithmetic.py:learn pretrains a tiny model on a thin seed of two-digit scratchpads
(weak on held-out problems), then runs three STaR iterations on answers alone. A change that
breaks learning (a wrong loss mask, kept rationales that never reach training, rationalization
that keeps nothing, sampling that reads the wrong tokens) leaves accuracy where it started.
"""

from helpers.runs import load_config
from star_jax import star


def test_star_lifts_held_out_accuracy_over_its_base_model(tmp_path):
  config = load_config("arithmetic", "learn")
  metrics = star.run(config, str(tmp_path / "run"))
  base, final = metrics[0]["eval_accuracy"], metrics[-1]["eval_accuracy"]
  assert base < 0.5, f"the base model should start weak, got {base:.1%}"
  assert final >= base + 0.25, [round(m["eval_accuracy"], 3) for m in metrics]
  accuracies = [m["eval_accuracy"] for m in metrics]
  # No collapse: the last iteration keeps the best one's accuracy within 3 points (200 held-out
  # questions; runs on other CPUs differ in float rounding by a question or two).
  assert final >= max(accuracies) - 0.03, [round(a, 3) for a in accuracies]
  assert metrics[1]["solved_by_rationalization"] > 0  # hinted retries keep rationales too
  assert all(m["kept"] > 0 and m["train_steps"] == 60 for m in metrics[1:])
