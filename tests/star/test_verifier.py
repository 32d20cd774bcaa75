"""V-STaR (star/verifier.py, star_jax.verify): the pairs drawn from STaR's right and wrong
samples, a DPO verifier that learns to rank, best-of-k by its score, and the loop's verifier
end to end, after a kill, and after the fact."""

import dataclasses
import json
import os
import signal
import sys

import numpy as np
import pytest

from conftest import mesh_of
from helpers.runs import load_config, run_main, run_results
from star_jax import config as config_lib, tasks
from star_jax.experiment.build import build
from star_jax.runtime.errors import ConfigError
from star_jax.star import best_of_k, rollout, verifier as verifier_lib


def test_pairs_are_right_wrong_combinations_capped_per_question_and_held_out_whole():
  samples = {"a": (["r1", "r2"], ["w1", "w2", "w3"]), "b": (["r"], []), "c": ([], ["w"]),
             "d": (["r"], ["w"]), "e": (["x", "y"], ["z"])}
  train, held = verifier_lib.make_pairs(samples, per_question=0, heldout_share=0.0, seed=0)
  assert not held and len(train) == 6 + 1 + 2  # b and c have no pair
  assert {(p.chosen, p.rejected) for p in train if p.question == "a"} == {
      (r, w) for r in ("r1", "r2") for w in ("w1", "w2", "w3")}
  capped, _ = verifier_lib.make_pairs(samples, per_question=4, heldout_share=0.0, seed=0)
  assert sum(p.question == "a" for p in capped) == 4 and sum(p.question == "e" for p in capped) == 2
  assert capped == verifier_lib.make_pairs(samples, 4, 0.0, seed=0)[0]  # a function of the seed
  train, held = verifier_lib.make_pairs(samples, per_question=0, heldout_share=0.34, seed=1)
  assert len({p.question for p in held}) == 1  # one of the three questions with pairs
  assert not {p.question for p in held} & {p.question for p in train}


def _example(i, a, b):
  from star_jax.tasks.arithmetic import ArithmeticTask
  return ArithmeticTask.make_example(a, b, f"q{i}")


def test_no_pairs_says_why_and_the_loop_what_to_rerun(tmp_path):
  from star_jax.star import loop
  samples = {"a": (["r"], ["w"]), "b": (["r"], []), "c": ([], ["w"]), "d": ([], ["v"])}
  train, held = verifier_lib.make_pairs(samples, per_question=0, heldout_share=0.9, seed=0)
  assert not train and len(held) == 1  # round(0.9 x 1 question): all held out
  why = verifier_lib.no_pairs(samples, held, 3, 0.9)
  assert "verifier.heldout_share=0.9 holds out all 1 questions" in why
  del samples["a"]
  assert "(1 all right, 2 all wrong)" in verifier_lib.no_pairs(samples, [], 3, 0.9)
  cfg = config_lib.load(load_config("arithmetic", "smoke"))
  rerun = loop._rerun_for_pairs(cfg, loop.get_method("star"), tmp_path,
                                verifier_lib.NoPairsError(why, "held_out"))
  # verifier.* keys are the run's config (a rerun would be refused): retrain beside the run
  assert rerun.startswith(why) and "0..2 are kept" in rerun and "\n" not in rerun
  assert f"star_jax.verify --checkpoint={tmp_path} --retrain --set=heldout_share=0" in rerun


def test_best_of_k_takes_the_answered_sample_the_verifier_scores_highest_ties_first():
  from star_jax.experiment.models import make_task
  task = make_task(config_lib.load(load_config("arithmetic", "smoke")))
  exs = [_example(0, 12, 30), _example(1, 5, 4), _example(2, 7, 1)]
  right = lambda ex: task.completion(task.gold_rationale(ex), ex)
  wrong = lambda ex: task.completion(task.gold_rationale(ex), dataclasses.replace(ex, answer="0"))
  gens = [rollout.Generation.of(task, exs[0], [wrong(exs[0]), right(exs[0]), wrong(exs[0]),
                                               wrong(exs[0])]),
          rollout.Generation.of(task, exs[1], ["", right(exs[1]), wrong(exs[1]), right(exs[1])]),
          rollout.Generation.of(task, exs[2], ["", "", "", ""])]  # nothing answered: wrong
  assert gens[0].correct == [False, True, False, False] and gens[1].predictions[0] is None
  scores = {"q0": np.array([0.0, 2.0, 1.0, 0.0]),  # picks the right one among wrong votes
            "q1": np.array([9.0, 1.0, 1.0, 1.0]),  # the unanswered never wins; a tie: the first
            "q2": np.zeros(4)}
  out = best_of_k.best_of_k_eval(task, gens, scores, exs, k=4)
  # best-of-4: q0 right, q1 right (sample 1 over 2 and 3), q2 wrong
  assert out["verifier_best_of"]["4"] == pytest.approx(2 / 3)
  # best-of-2 over the blocks (0, 1), (2, 3): q0 1/2, q1 (1 over the unanswered 0; 2 before 3) 1/2
  assert out["verifier_best_of"]["2"] == pytest.approx((0.5 + 0.5 + 0) / 3)
  # best-of-1 is each sample's own accuracy: pass@1
  assert out["verifier_best_of"]["1"] == pytest.approx((1 / 4 + 2 / 4) / 3)
  assert out["majority_at"]["4"] == pytest.approx(1 / 3)  # q0's vote is wrong, q1's right
  assert out["verifier_by_difficulty"] == {"1": 0.5, "2": 1.0}
  scores["q1"] = np.array([9.0, 1.0, 5.0, 1.0])  # now the wrong sample 2 scores highest
  assert best_of_k.best_of_k_eval(task, gens, scores, exs, 4)["verifier_best_of"]["4"] == \
      pytest.approx(1 / 3)
  assert best_of_k.pick([None, "1", "2"], [5.0, 1.0, 1.0]) == 1
  assert best_of_k.pick([None, None], [0.0, 0.0]) is None


def _tiny_config(**verifier):
  c = load_config("arithmetic", "smoke")
  c.data.max_train, c.data.max_eval = 48, 8
  c.pretrain.steps = 0
  c.verifier.enabled = True
  for k, v in verifier.items():
    setattr(c.verifier, k, v)
  return config_lib.load(c)


def _handmade_pairs(task, examples):
  """A right sample (the true scratchpad) over a wrong one (the same scratchpad, answered
  1-7 above the sum: wrong answers differ, so no constant rule such as "an answer of 0 is
  wrong" ranks them)."""
  return [verifier_lib.Pair(ex.id, task.completion(task.gold_rationale(ex), ex),
                            task.completion(task.gold_rationale(ex), dataclasses.replace(
                                ex, answer=str(int(ex.answer) + 1 + i % 7))))
          for i, ex in enumerate(examples)]


def _train_verifier(tmp_path, shape, monkeypatch):
  cfg = _tiny_config(learning_rate=3e-3, batch_pairs=8, epochs=4.0)
  exp = build(cfg, tmp_path)
  from star_jax.engine import params as params_lib
  exp.mesh = mesh_of(shape)
  exp.graphdef, exp.params = params_lib.init_params(exp.model_cfg, exp.mesh, seed=0)
  hints = []
  prompt = exp.task.prompt
  monkeypatch.setattr(exp.task, "prompt", lambda ex, hint=False, few_shot=True: (
      hints.append(hint), prompt(ex, hint=hint, few_shot=few_shot))[1])
  pairs = _handmade_pairs(exp.task, exp.train_set)
  train, held = pairs[:40], pairs[40:]
  v = verifier_lib.train(cfg, exp, 1, exp.params, train, held, few_shot=False, ckpt_dir=None)
  assert hints and not any(hints)  # the verifier never reads a hint
  return exp, v, train, held


def test_a_tiny_verifier_ranks_held_out_right_samples_above_wrong_ones(tmp_path, monkeypatch):
  """From random weights, DPO on 40 hand-made pairs; the held-out questions' pairs are mostly
  ranked right. Sharded on a (2, 2, 2) mesh it scores as on one device."""
  exp, v, train, held = _train_verifier(tmp_path / "one", (1, 1, 1), monkeypatch)
  assert v.fields["verifier_heldout_pairs"] == len(held) >= 4
  # measured 0.875 (7 of 8 held-out pairs); a constant score ranks none of them right
  assert v.fields["verifier_pairwise_accuracy"] >= 0.75
  assert v.fields["verifier_steps"] == 20 and v.fields["verifier_pairs"] == 40
  by_id = {ex.id: ex for ex in exp.train_set}
  prompt, ids = verifier_lib.encode(exp.task, exp.tokenizer, by_id[train[0].question],
                                    [train[0].chosen], False)
  # the score is beta x log pi_v / pi_ref: zero under the reference itself
  assert dataclasses.replace(v, params=v.ref).score([prompt], ids)[0] == 0.0
  scores = v.score([prompt] * 2, ids + [[]])
  assert np.isfinite(scores[0]) and scores[1] == -np.inf  # an empty completion: never picked
  # a text sampled again is scored once and gets its first copy's score
  other = exp.tokenizer.encode(train[0].rejected)
  again = v.score([prompt] * 4, [ids[0], other, ids[0], []])
  assert again[0] == again[2] and again[3] == -np.inf
  np.testing.assert_allclose(again[:3], [scores[0], v.score([prompt], [other])[0], scores[0]],
                             rtol=1e-6)

  def held_scores(exp, v):
    prompts = [verifier_lib.encode(exp.task, exp.tokenizer, by_id[p.question], [], False)[0]
               for p in held]
    return np.stack([v.score(prompts, [exp.tokenizer.encode(getattr(p, side)) for p in held])
                     for side in ("chosen", "rejected")])
  one = held_scores(exp, v)
  assert len({p.rejected.split("\n")[-3] for p in train}) >= 7  # the wrong answers vary
  assert np.std(one[0]) > 0 and np.std(one[1]) > 0  # and so do the scores, per side
  exp8, v8, _, _ = _train_verifier(tmp_path / "eight", (2, 2, 2), monkeypatch)
  assert v8.fields["verifier_pairwise_accuracy"] == v.fields["verifier_pairwise_accuracy"]
  np.testing.assert_allclose(held_scores(exp8, v8), one, rtol=1e-2, atol=1e-2)


def test_bad_verifier_settings_are_refused(tmp_path):
  from star_jax import star
  for keys, match in [({"beta": 0.0}, "verifier.beta"), ({"heldout_share": 1.0}, "heldout_share"),
                      ({"batch_pairs": 0}, "batch_pairs")]:
    c = load_config("arithmetic", "smoke")
    c.verifier.enabled = True
    c.star.samples_per_question, c.star.temperature = 4, 0.7
    for k, v in keys.items():
      setattr(c.verifier, k, v)
    with pytest.raises(ConfigError, match=match):
      star.run(c, tmp_path / "x")
    assert not (tmp_path / "x" / "config.json").exists()


def test_a_run_whose_samples_give_no_pairs_ends_in_one_line_its_iterations_kept(
    tmp_path, monkeypatch):
  """A config that can work (2 samples a question at 0.7) whose samples all come back wrong:
  the iteration is kept without a verifier and the run ends in one line naming the rerun,
  which (star.iterations is operational) goes on in the same workdir."""
  from helpers.arithmetic_texts import wrong
  from helpers.scripted import ScriptedSampler
  from star_jax import star
  from star_jax.star import loop
  monkeypatch.setattr(loop, "make_sampler", lambda exp, cfg: ScriptedSampler(
      exp.task, exp.train_set + exp.eval_set, lambda ex, hint: wrong(ex), exp.tokenizer))
  c = load_config("arithmetic", "smoke")
  c.data.max_train, c.data.max_eval = 8, 4
  c.pretrain.steps = 0
  c.star.samples_per_question, c.star.temperature = 2, 0.7
  c.verifier.enabled = True
  for n in (1, 2):
    c.star.iterations = n
    with pytest.raises(verifier_lib.NoPairsError) as e:
      star.run(c, tmp_path)
    message = str(e.value)
    assert "\n" not in message and f"no verifier after iteration {n}" in message
    assert "0 all right, 8 all wrong" in message and f"0..{n} are kept" in message
    assert f"--config.star.iterations={n + 1}" in message and "star.temperature" in message
    metrics = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [m["iteration"] for m in metrics] == list(range(n + 1))
    assert "verifier_pairs" not in metrics[-1]
    assert str(n) in os.listdir(tmp_path / "checkpoints")


ARITHMETIC = tasks.get_task("arithmetic")
CMD = [sys.executable, "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke",
       "--config.verifier.enabled=True", "--config.verifier.every_iteration=True",
       "--config.verifier.batch_pairs=2", "--config.verifier.epochs=3",
       "--config.verifier.learning_rate=1e-3", "--config.star.samples_per_question=4",
       "--config.star.temperature=1.0", "--config.eval.samples=4", "--config.pretrain.steps=60"]


def _run(workdir, failpoint=None, *args):
  return run_main(CMD, workdir, failpoint, *args)


def test_vstar_end_to_end_resumed_after_a_kill_and_verified_after_the_fact(tmp_path):
  clean = tmp_path / "clean"
  proc = _run(clean)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = [json.loads(l) for l in open(clean / "metrics.jsonl")]
  for n, m in enumerate(metrics):
    if n == 0:
      assert "verifier_pairs" not in m
      continue
    samples = [json.loads(l) for l in open(clean / f"iter_{n:03d}" / "samples.jsonl")]
    assert len(samples) == m["train_questions"]
    assert all(r["right"] or r["wrong"] for r in samples)
    # real wrong samples, not one constant answer a verifier could learn to spot
    answers = {ARITHMETIC.extract_answer(t) for r in samples for t in r["wrong"]}
    assert len(answers) > 3 and answers != {"0"}
    assert m["verifier_iteration"] == n and m["verifier_pairs"] > 0
    assert set(m["eval_verifier_best_of"]) == set(m["eval_majority_at"]) == {"1", "2", "4"}
    # best-of-1 and majority@1 are the samples' own accuracy, pass@1
    assert m["eval_verifier_best_of"]["1"] == pytest.approx(m["eval_pass_at"]["1"])
    assert m["eval_majority_at"]["1"] == pytest.approx(m["eval_pass_at"]["1"])
    assert m["eval_verifier_best_of_k"] == m["eval_verifier_best_of"]["4"]
  assert sorted(os.listdir(clean / "verifier")) == ["1", "2"]
  assert not [d for d in os.listdir(clean) if d.startswith("verifier_train")]

  killed = tmp_path / "killed"  # iteration 1's verifier: 3 epochs of its pairs, 2 a step
  proc = _run(killed, "verifier_step:3", "--config.checkpoint_every=2",
              "--config.checkpoint_async=False")
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  proc = _run(killed, None, "--config.checkpoint_every=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "iter 1 verifier: resuming from the checkpoint at step 2 of" in proc.stderr
  assert run_results(killed) == run_results(clean)

  from star_jax.verify import verify, table
  env_result = verify(str(clean), 4, out=str(tmp_path / "v.json"))  # reloads verifier/2
  last = metrics[-1]
  assert env_result["verifier_best_of"] == last["eval_verifier_best_of"]
  assert env_result["majority_at"] == last["eval_majority_at"]
  assert env_result["pass_at"] == last["eval_pass_at"]
  assert "verifier best-of-j" in table(env_result)
  other = verify(str(clean), 4, retrain=True, verifier_dir=str(tmp_path / "v2"),
                 sets=["beta=0.5", "init=generator"], out=str(tmp_path / "v2.json"))
  assert other["verifier_beta"] == 0.5 and other["verifier_init"] == "generator"
  assert other["pass_at"] == last["eval_pass_at"]  # the same samples, another verifier
  assert os.listdir(tmp_path / "v2") == ["2"]
  with pytest.raises(ConfigError, match="KEY=VALUE"):
    verify(str(clean), 4, sets=["bogus=1"])


def test_the_vstar_table_and_plot_read_runs_and_verify_files(tmp_path, capsys):
  from benchmarks import vstar
  run = tmp_path / "run"
  run.mkdir()
  curve = lambda a, b: {"1": a, "2": (a + b) / 2, "4": b}
  with open(run / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"iteration": 0, "eval_accuracy": 0.4}) + "\n")
    f.write(json.dumps({"iteration": 1, "eval_accuracy": 0.6, "verifier_pairs": 10,
                        "verifier_questions": 5, "verifier_train_accuracy": 0.9,
                        "verifier_pairwise_accuracy": 0.8, "eval_pass_at": curve(0.5, 0.9),
                        "eval_majority_at": curve(0.5, 0.6),
                        "eval_verifier_best_of": curve(0.5, 0.7)}) + "\n")
  ver = tmp_path / "v.json"
  ver.write_text(json.dumps({"iteration": 1, "pass_at": curve(0.5, 0.9),
                             "majority_at": curve(0.5, 0.6), "verifier_best_of": curve(0.5, 0.4),
                             "verifier_pairs": 10, "verifier_pairwise_accuracy": 0.5}))
  vstar.main(["--runs", f"a={run}", "--verify", f"b={ver}", "--plot", str(tmp_path / "p.png")])
  out = capsys.readouterr().out
  assert "| a | 1 | 10 (5) | 90.0 / 80.0 | 50.0 / **50.0** / 50.0 |" in out
  assert "60.0 / **70.0** / 90.0 |" in out and "60.0 / **40.0** / 90.0 |" in out
  assert (tmp_path / "p.png").exists()


def test_a_preemption_notice_stops_the_verifier_at_a_saved_step_and_it_resumes_the_same(
    tmp_path):
  from star_jax.hub.checkpointer import Checkpointer
  from star_jax.runtime import distributed
  cfg = _tiny_config(learning_rate=3e-3, batch_pairs=8, epochs=2.0)
  exp = build(cfg, tmp_path / "w")
  pairs = _handmade_pairs(exp.task, exp.train_set)[:16]  # 4 steps
  whole = verifier_lib.train(cfg, exp, 1, exp.params, pairs, [], False, tmp_path / "a")
  distributed._notice.set()  # a notice before the first step ends: it stops after it, saved
  try:
    with pytest.raises(distributed.Preempted, match="step 1 of 4"):
      verifier_lib.train(cfg, exp, 1, exp.params, pairs, [], False, tmp_path / "b")
  finally:
    distributed._notice.clear()
  ckpt = Checkpointer(tmp_path / "b")
  assert ckpt.meta()["verifier_step"] == 1
  ckpt.close()
  resumed = verifier_lib.train(cfg, exp, 1, exp.params, pairs, [], False, tmp_path / "b")
  prompt, ids = verifier_lib.encode(exp.task, exp.tokenizer, exp.train_set[0],
                                    [pairs[0].chosen, pairs[0].rejected], False)
  np.testing.assert_allclose(resumed.score([prompt] * 2, ids), whole.score([prompt] * 2, ids),
                             rtol=1e-5, atol=1e-6)
