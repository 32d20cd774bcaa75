"""``star.method=mcts`` end to end on the arithmetic smoke run: the search's traces kept with
their Q, its budget in sampled tokens kept, and a run killed after its first searched shard
resumed to the uninterrupted run's results."""

import json
import signal
import sys

import pytest

from helpers.runs import run_main, run_results

MCTS = [sys.executable, "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke",
        "--config.star.method=mcts", "--config.star.iterations=1", "--config.pretrain.steps=60",
        "--config.star.questions_per_iteration=16", "--config.sample.shard_size=8",
        "--config.search.budget_tokens=400", "--config.search.width=3"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mcts") / "clean"
  proc = run_main(MCTS, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_mcts_keeps_right_searched_traces_with_their_q_within_the_budget(clean):
  record = [json.loads(line) for line in open(clean / "metrics.jsonl")][-1]
  assert record["search_right_traces"] > 0 and record["kept"] > 0
  assert 0 < record["tokens_sampled"] == record["search_tokens"] <= 16 * 400
  kept = [json.loads(line) for line in open(clean / "iter_001" / "kept.jsonl")]
  assert kept and all(k["source"] == "generation" and -1.0 <= k["q"] <= 1.0 for k in kept)
  assert len(kept) == record["solved_by_generation"]


def test_a_killed_search_resumes_at_its_first_unsearched_shard_to_the_same_results(
    clean, tmp_path):
  killed = tmp_path / "killed"
  proc = run_main(MCTS, killed, "search_shard:1")
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert sorted(p.name for p in (killed / "iter_001" / "search_shards").iterdir()) == [
      "shard_00000.jsonl"]
  proc = run_main(MCTS, killed)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert run_results(killed) == run_results(clean)
