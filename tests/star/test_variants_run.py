"""Each STaR-family method end to end on a tiny arithmetic run (the :smoke model, 8 questions,
one iteration, self-consistency evaluation on): the loop, its artifacts and metrics.jsonl.
The logic of each method is checked against a scripted sampler in test_variants.py."""

import collections
import json
import os

import pytest

from helpers.runs import load_config
from star_jax import star

SAMPLES, CAP = 4, 2


@pytest.mark.parametrize("method", ["rest_em", "rft", "bstar"])
def test_variant_runs_end_to_end(tmp_path, method):
  c = load_config("arithmetic")
  c.data.max_train, c.data.max_eval = 8, 6
  c.pretrain.steps, c.pretrain.data = 20, {"max_train": 40, "seed": 1}
  c.star.iterations, c.star.base_steps = 1, 2
  c.star.method, c.star.samples_per_question, c.star.temperature = method, SAMPLES, 1.0
  c.star.max_kept_per_question = CAP
  c.star.bstar_probe_questions, c.star.bstar_temperatures = 8, (1.0, 1.5)
  c.star.bstar_thresholds = (-1.0,)  # a keep threshold on the samples' mean log-prob too
  c.eval.samples = 2
  metrics = star.run(c, tmp_path)
  assert [m["iteration"] for m in metrics] == [0, 1]
  for m in metrics:
    assert m["eval_samples"] == 2 and set(m["eval_pass_at"]) == {"1", "2"}
    assert 0 <= m["eval_majority_accuracy"] <= m["eval_pass_at"]["2"] <= 1
    assert set(m["majority_accuracy_by_digits"]) == set(m["accuracy_by_digits"])
  last = metrics[1]
  assert last["method"] == method and last["train_questions"] == 8
  assert 0 <= last["distinct_paths_per_question"] <= SAMPLES
  kept = [json.loads(l) for l in open(os.path.join(tmp_path, "iter_001", "kept.jsonl"))]
  assert len(kept) == last["kept"]
  assert max(collections.Counter(k["id"] for k in kept).values(), default=0) <= CAP
  assert {k["source"] for k in kept} <= {"generation"}  # no rationalization
  if method == "bstar":
    scores = last["bstar_scores"]
    assert set(scores) == {"1.0", "1.5", "1.0@-1.0", "1.5@-1.0"}
    chosen = (str(last["bstar_temperature"]) if last["bstar_threshold"] is None
              else f"{last['bstar_temperature']}@{last['bstar_threshold']}")
    assert last["bstar_score"] == max(scores.values()) == scores[chosen]
