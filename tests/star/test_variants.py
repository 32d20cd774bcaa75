"""The STaR family (star/methods.py, star/keep.py) and self-consistency evaluation
(star/rollout.py) against a scripted sampler (helpers/scripted.py): ReST-EM's cap, RFT's
distinct paths, B-STaR's choice of temperature, pass@k and the majority vote. Fine-tuning is
a stand-in that records its calls (as in test_iteration.py); the file runs in a few seconds.
The last test reads hand-made metrics with the comparison script (benchmarks/variants.py).

Texts per arithmetic problem: the gold scratchpad; the same path with other spacing (a
different text); another path, one wrong middle line, that still ends at the right sum; and
a wrong answer (the scratchpad and sum of another problem).
"""

import dataclasses
import json
import math

import numpy as np
import pytest

from helpers.arithmetic_texts import TASK, other_path, right, spaced, wrong
from helpers.scripted import ScriptedSampler, experiment
from star_jax import config as config_lib, tasks
from star_jax.data import DataConfig
from star_jax.star import finetune as ft, keep as keep_lib, methods, rollout
from star_jax.star.iteration import Star
from star_jax.star.record import iteration_record
from star_jax.runtime.errors import ConfigError
from star_jax.star.methods import RFT, BStar, RestEM

BASE, MODEL = {"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}
TRAINED = {"w": np.full(2, 7.0, np.float32)}


def config(star=None, evals=None):
  cfg = config_lib.load(config_lib.base_config("arithmetic"))
  return dataclasses.replace(cfg, star=dataclasses.replace(cfg.star, **(star or {})),
                             eval=dataclasses.replace(cfg.eval, **(evals or {})))


@pytest.fixture
def trained(monkeypatch):
  calls = []

  def finetune(trainer, params, examples, train_cfg, steps, seed, **kw):
    calls.append({"start": params, "examples": examples})
    return TRAINED, ft.FinetuneStats(steps, len(examples), 0, 1, 0.5, 0.5, 0.0)
  monkeypatch.setattr(ft, "make_trainer", lambda *args: None)
  monkeypatch.setattr(ft, "finetune", finetune)
  return calls


def run(tmp_path, script, method, train=12, evals=(), star=None, eval_cfg=None):
  train = TASK.load("train", DataConfig(max_train=train))
  sampler = ScriptedSampler(TASK, train + list(evals), script)
  m = method(config(star, eval_cfg), experiment(TASK, train, evals), sampler, tmp_path)
  return m, sampler, m.iteration(1, BASE, MODEL)


def test_each_variant_is_one_key_away():
  assert {n: methods.get_method(n) for n in ("rest_em", "rft", "bstar")} == {
      "rest_em": RestEM, "rft": RFT, "bstar": BStar}


@pytest.mark.parametrize("cap,per_question", [(2, 2), (10, 3)])
def test_rest_em_keeps_right_samples_up_to_the_cap(tmp_path, trained, cap, per_question):
  """4 samples a question, 3 right (two of them the same text): ReST-EM keeps right samples,
  repeats included, at most ``cap`` a question; no hint is ever asked; M_0 is trained."""
  script = lambda ex, hint: [right(ex), wrong(ex), right(ex), other_path(ex)]
  _, sampler, result = run(tmp_path, script, RestEM,
                           star={"samples_per_question": 4, "temperature": 0.7,
                                 "max_kept_per_question": cap, "restart_from_base": True})
  assert [hint for c in sampler.calls for _, hint in c.asked] == [False] * 12
  per = {}
  for k in result.kept:
    per[k["id"]] = per.get(k["id"], 0) + 1
  assert set(per.values()) == {per_question} and len(per) == 12
  assert trained[0]["start"] is BASE and len(trained[0]["examples"]) == 12 * per_question
  record = iteration_record(1, TASK, result, _eval())
  assert record["method"] == "rest_em" and record["kept"] == 12 * per_question
  assert record["distinct_paths_per_question"] == 2.0  # gold and other_path


def test_rft_keeps_one_rationale_per_distinct_path(tmp_path, trained):
  """Identical texts and the same path respaced count once; a distinct path is kept too;
  STaR's text rule keeps the respaced copy as another rationale."""
  script = lambda ex, hint: [right(ex), spaced(ex), right(ex), other_path(ex), wrong(ex)]
  star = {"samples_per_question": 5, "temperature": 0.7, "max_kept_per_question": 10}
  _, _, result = run(tmp_path, script, RFT, star=star)
  by_id = {}
  for k in result.kept:
    by_id.setdefault(k["id"], []).append(k["rationale"])
  ex = result.questions[0]
  assert by_id[ex.id] == [TASK.split_rationale(right(ex)), TASK.split_rationale(other_path(ex))]
  assert all(len(v) == 2 for v in by_id.values()) and len(by_id) == 12
  assert iteration_record(1, TASK, result, _eval())["distinct_paths_per_question"] == 2.0
  _, _, star_result = run(tmp_path / "star", script, Star, star={**star, "rationalize": False})
  assert len(star_result.kept) == 12 * 3  # right, spaced, other_path


def test_path_keys_per_task():
  ex = TASK.load("train", DataConfig(max_train=1))[0]
  r = TASK.split_rationale
  assert TASK.path_key(r(right(ex))) == TASK.path_key(r(spaced(ex)))
  assert TASK.path_key(r(right(ex))) != TASK.path_key(r(other_path(ex)))
  gsm = tasks.get_task("gsm8k")
  assert gsm.path_key("She sold 48/2 = 24 clips, then 48 + 24 = 72.") == \
      gsm.path_key("In May: 48 / 2 = 24. Together 48+24 = 72 clips.") == "48/2=24 ; 48+24=72"
  assert gsm.path_key("48 + 24 = 72 and 48/2 = 24") != gsm.path_key("48/2 = 24, 48 + 24 = 72")
  cqa = tasks.get_task("cqa")
  assert cqa.path_key("Letters  go in a\nMailbox.") == cqa.path_key("letters go in a mailbox.")
  assert cqa.path_key("letters go in a mailbox.") != cqa.path_key("letters go in a box.")


def test_bstar_samples_at_the_argmax_of_the_balance_score_it_logs(tmp_path, trained):
  """n0 = 2, 4 samples a question. Per temperature: 0.5 all wrong (score 0); 0.7 gold twice,
  a wrong-step path, a wrong answer (min(1/2, 1) * 1/2 = 0.25); 0.9 gold four times (0.5);
  1.1 three wrong and gold (0.5, a tie: the first listed wins). The iteration samples at 0.9."""
  def script(ex, hint, temperature):
    return {0.5: [wrong(ex)] * 4, 0.7: [right(ex), right(ex), other_path(ex), wrong(ex)],
            0.9: [right(ex)] * 4, 1.1: [wrong(ex)] * 3 + [right(ex)]}[temperature]
  star = {"samples_per_question": 4, "temperature": 0.3, "bstar_n0": 2,
          "bstar_probe_questions": 5, "bstar_temperatures": (0.5, 0.7, 0.9, 1.1)}
  _, sampler, result = run(tmp_path, script, BStar, star=star)
  probes, main = sampler.calls[:4], sampler.calls[4:]
  assert [c.sampling.temperature for c in probes] == [0.5, 0.7, 0.9, 1.1]
  assert all(len(c.asked) == 5 and c.asked == probes[0].asked for c in probes)
  assert [c.sampling.temperature for c in main] == [0.9] and len(main[0].asked) == 12
  record = iteration_record(1, TASK, result, _eval())
  assert record["bstar_scores"] == {"0.5": 0.0, "0.7": 0.25, "0.9": 0.5, "1.1": 0.5}
  scores = record["bstar_scores"]
  assert record["bstar_temperature"] == 0.9 == float(max(scores, key=scores.get))
  assert record["bstar_score"] == 0.5 and record["method"] == "bstar"
  assert len(result.kept) == 12  # four copies of one path: kept once


def test_bstar_chooses_a_keep_threshold_on_the_samples_confidence(tmp_path, trained):
  """n0 = 1, 4 samples, one temperature. The right samples are confident (mean log-prob
  -0.05), the wrong-step path that still reaches the answer is not (-2.0): without a
  threshold both are selected (min(2/1, 1) * 1/2 = 0.5); a threshold of -0.5 selects the
  right one only (1.0); -0.01 selects nothing (0). The iteration keeps above -0.5."""
  def script(ex, hint, temperature):
    return [(right(ex), -0.05), (other_path(ex), -2.0), (wrong(ex), -0.01), (right(ex), -0.05)]
  star = {"samples_per_question": 4, "temperature": 0.3, "bstar_n0": 1,
          "bstar_probe_questions": 5, "bstar_temperatures": (0.7,),
          "bstar_thresholds": (-0.5, -0.01), "max_kept_per_question": 4}
  _, sampler, result = run(tmp_path, script, BStar, star=star)
  assert len(sampler.calls) == 2  # one probe sampling for every threshold, then the iteration
  record = iteration_record(1, TASK, result, _eval())
  assert record["bstar_scores"] == {"0.7": 0.5, "0.7@-0.5": 1.0, "0.7@-0.01": 0.0}
  assert (record["bstar_temperature"], record["bstar_threshold"]) == (0.7, -0.5)
  assert record["bstar_score"] == 1.0
  assert {k["rationale"] for k in result.kept} == {TASK.split_rationale(right(ex))
                                                  for ex in result.questions}


def test_bstar_thresholds_are_log_probabilities():
  with pytest.raises(ConfigError, match="bstar_thresholds"):
    BStar(config({"bstar_thresholds": (0.5,)}), experiment(TASK, []), None, "/tmp")


def test_keep_drops_samples_below_the_threshold_and_scores_are_mean_log_probs():
  ex = TASK.load("train", DataConfig(max_train=1))[0]
  gen = rollout.Generation(ex, [right(ex), other_path(ex)], [ex.answer] * 2, [True, True],
                           [-0.1, -3.0])
  assert len(keep_lib.keep(TASK, [gen], "generation", 4).records) == 2
  kept = keep_lib.keep(TASK, [gen], "generation", 4, min_score=-1.0).records
  assert [k["rationale"] for k in kept] == [TASK.split_rationale(right(ex))]
  out = ScriptedSampler(TASK, [ex], lambda e, h: [(right(e), -0.25)]).sample(
      None, [TASK.prompt(ex)], 8, None, decode_fn=lambda p: p)
  assert rollout.mean_logprob(out, 0, 0) == pytest.approx(-0.25)


def test_balance_score_counts_step_correct_paths_only():
  ex = TASK.load("train", DataConfig(max_train=1))[0]
  from star_jax.star.rollout import Generation

  def gen(texts):
    preds = [TASK.extract_answer(t) for t in texts]
    return Generation(ex, texts, preds, [TASK.is_correct(p, ex) for p in preds])
  gens = [gen([right(ex), other_path(ex)]), gen([wrong(ex)] * 2), gen([right(ex), spaced(ex)])]
  # min(1/1, 1) * 1/2, 0 (nothing selected), min(1/1, 1) * 1/1 (one path)
  assert keep_lib.balance_score(TASK, gens, n0=1) == pytest.approx((0.5 + 0 + 1) / 3)
  assert keep_lib.balance_score(TASK, gens, n0=2) == pytest.approx((0.25 + 0 + 0.5) / 3)


def test_pass_at_k_is_the_unbiased_estimator():
  # n = 4 samples, c = 2 right: pass@1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1
  assert rollout.pass_at_k(4, 2, 1) == pytest.approx(0.5)
  assert rollout.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
  assert rollout.pass_at_k(4, 2, 4) == 1.0
  assert rollout.pass_at_k(5, 0, 3) == 0.0
  assert rollout.pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
  assert rollout.ks(4) == [1, 2, 4] and rollout.ks(6) == [1, 2, 4, 6]
  with pytest.raises(ValueError):
    rollout.pass_at_k(4, 5, 1)


def test_majority_vote_counts_by_hand_and_breaks_ties_by_first_seen():
  assert rollout.majority_vote(["7", "8", "8", None, "7", "8"]) == "8"  # 3 against 2
  assert rollout.majority_vote(["8", "7", "7", "8"]) == "8"  # a tie: 8 was seen first
  assert rollout.majority_vote([None, "7", None, None]) == "7"  # no answer never votes
  assert rollout.majority_vote([None, None]) is None


def test_evaluation_adds_pass_at_k_and_majority_per_bucket(tmp_path, trained):
  """eval.samples = 4 at eval.temperature: per held-out problem the script gives 4 answers;
  the metrics hold greedy accuracy, pass@1/2/4 and majority accuracy, per digit count too."""
  evals = tasks.get_task("arithmetic", max_digits=2).load("eval", DataConfig(max_eval=6))
  # by position: majority right; a 2-2 tie, the wrong answer first; one right of four
  plans = [[right, right, wrong, right], [wrong, right, right, wrong],
           [wrong, wrong, wrong, right]]

  def script(ex, hint, temperature):
    if temperature == 0:
      return right(ex)
    assert temperature == 0.6
    return [f(ex) for f in plans[evals.index(ex) % 3]]
  m, _, result = run(tmp_path, script, Star, evals=evals, eval_cfg={"samples": 4,
                                                                    "temperature": 0.6})
  record = iteration_record(1, TASK, result, m.evaluate(1, result.params, False))
  c = [3, 2, 1] * 2
  assert record["eval_accuracy"] == 1.0 and record["eval_samples"] == 4
  assert record["eval_temperature"] == 0.6
  assert record["eval_majority_accuracy"] == pytest.approx(2 / 6)  # only plan 0 wins the vote
  for j in (1, 2, 4):
    assert record["eval_pass_at"][str(j)] == pytest.approx(
        np.mean([rollout.pass_at_k(4, ci, j) for ci in c]))
  digits = {str(ex.meta["digits"]) for ex in evals}
  assert set(record["majority_accuracy_by_digits"]) == set(record["pass_at_k_by_digits"]) == digits


def _eval():
  from star_jax.star.rollout import EvalResult
  return EvalResult(0.25, 4, [], {}, 0)


def test_the_comparison_gives_each_seeds_final_accuracy_and_their_mean(tmp_path, capsys):
  from benchmarks import variants

  def write(name, accs, votes):
    d = tmp_path / name
    d.mkdir()
    with open(d / "metrics.jsonl", "w") as f:
      for i, (a, v) in enumerate(zip(accs, votes)):
        f.write(json.dumps({"iteration": i, "eval_accuracy": a, "eval_majority_accuracy": v,
                            "train_seconds": 60.0, "solved_by_generation": 3,
                            "solved_by_rationalization": 1, "train_questions": 8,
                            "kept": 4}) + "\n")
    return str(d)

  s0 = write("s0", [0.5, 0.8, 0.9], [0.4, 0.7, 0.85])
  s1 = write("s1", [0.4, 0.6], [0.3, 0.5])  # stopped an iteration earlier
  other = write("o0", [0.5, 0.55, 0.6], [0.5, 0.5, 0.5])
  variants.main(["--runs", f"star={s0},{s1}", f"rft={other}"])
  out = capsys.readouterr().out
  assert "| star | 50.0 (40.0) | 80.0 (70.0) | 90.0 (85.0) | 2 |" in out  # the first seed's run
  # the last iteration every run reached is 1: star's seeds at 80 and 60, mean 70
  assert "mean (iter 1)" in out
  assert "| star | 80.0 (70.0) | 60.0 (50.0) | 70.0 (60.0) |" in out
  assert "| rft | 55.0 (50.0) |  | 55.0 (50.0) |" in out
