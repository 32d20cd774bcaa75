"""One iteration of STaR and of its controls against a scripted sampler (helpers/scripted.py):
which questions are sampled with and without the hint, what is kept and trained on, which
model training starts from, and the metrics record. Nothing is built or compiled: fine-tuning
is replaced by a record of its calls, and the file runs in about a second.

The script answers arithmetic problems by their index in the train set: right (the gold
scratchpad), wrong (the scratchpad and sum of another problem), or unsupported (the right sum
after a scratchpad that reaches another).
"""

import collections

import dataclasses
import json

import numpy as np
import pytest

from helpers.scripted import CharTokenizer, ScriptedSampler, experiment
from star_jax import config as config_lib, tasks
from star_jax.data import DataConfig
from star_jax.star import finetune as ft, seed
from star_jax.star.iteration import Star
from star_jax.star.methods import Direct, SeedOnly
from star_jax.star.record import iteration_record
from star_jax.star.rollout import EvalResult
from star_jax.tasks.arithmetic import spaced

TASK = tasks.get_task("arithmetic", max_digits=2)
TOK = CharTokenizer()
BASE, MODEL = {"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}  # M_0, M_{n-1}
TRAINED = {"w": np.full(2, 7.0, np.float32)}  # what the stand-in fine-tune returns
SEED_SET = 6  # problems in the seed set P (pretrain.data.max_train)


def index(ex) -> int:
  return int(ex.id.rsplit("-", 1)[1])


def right(ex) -> str:
  return TASK.completion(TASK.gold_rationale(ex), ex)


def _other(ex):  # the same problem with b + 1: another sum, another scratchpad
  return TASK.make_example(ex.meta["a"], ex.meta["b"] + 1, "other")


def wrong(ex) -> str:
  return right(_other(ex))


def unsupported(ex) -> str:
  return TASK.completion(TASK.gold_rationale(_other(ex)), ex)


def config(**star):
  cfg = config_lib.load(config_lib.base_config("arithmetic"))
  return dataclasses.replace(cfg, star=dataclasses.replace(cfg.star, **star),
                             pretrain=dataclasses.replace(cfg.pretrain,
                                                          data={"max_train": SEED_SET}))


@pytest.fixture
def trained(monkeypatch):
  """Fine-tuning replaced by a record of each call; it returns TRAINED."""
  calls = []

  def finetune(trainer, params, examples, train_cfg, steps, seed, **kw):
    calls.append({"start": params, "examples": examples, "steps": steps,
                  "keep_masters": kw["keep_masters"]})
    return TRAINED, ft.FinetuneStats(steps, len(examples), 0, 1, 0.5, 0.5, 0.0)
  monkeypatch.setattr(ft, "make_trainer", lambda *args: None)
  monkeypatch.setattr(ft, "finetune", finetune)
  return calls


def run(tmp_path, script, n=1, train=20, evals=(), method=Star, **star):
  """(method, sampler, result) of iteration ``n`` from MODEL, with BASE as M_0."""
  train = TASK.load("train", DataConfig(max_train=train))
  sampler = ScriptedSampler(TASK, train + list(evals), script)
  m = method(config(**star), experiment(TASK, train, evals), sampler, tmp_path)
  return m, sampler, m.iteration(n, BASE, MODEL)


def texts(examples) -> list[tuple[str, str]]:
  return [(TOK.decode(e.prompt), TOK.decode(e.completion)) for e in examples]


def test_only_failures_are_rationalized_and_no_hint_is_trained_on(tmp_path, trained):
  """Even problems are solved; odd ones only with the hint, which the model echoes before its
  scratchpad. Both phases sample M_{n-1}; the hinted phase asks the failures alone; every
  kept rationale is the gold scratchpad, tagged with its phase; training sees no hint."""
  def script(ex, hint):
    if hint:
      return f"Hint: {spaced(ex.answer)}\n" + right(ex)
    return right(ex) if index(ex) % 2 == 0 else wrong(ex)
  _, sampler, result = run(tmp_path, script)
  questions = result.questions
  assert len(questions) == 20 and len(sampler.calls) == 2
  plain, hinted = sampler.calls
  assert plain.asked == [(ex, False) for ex in questions]
  assert hinted.asked == [(ex, True) for ex in questions if index(ex) % 2]
  for call in sampler.calls:
    np.testing.assert_array_equal(call.params["w"], MODEL["w"])

  by_id = {ex.id: ex for ex in questions}
  assert [k["id"] for k in result.kept] == (
      [ex.id for ex in questions if index(ex) % 2 == 0] +
      [ex.id for ex in questions if index(ex) % 2])
  for k in result.kept:
    ex = by_id[k["id"]]
    assert k["rationale"] == TASK.gold_rationale(ex) and k["answer"] == ex.answer
    assert k["source"] == ("rationalization" if index(ex) % 2 else "generation")
  assert "Hint" not in json.dumps(result.kept)

  assert result.params is TRAINED and len(trained) == 1
  assert texts(trained[0]["examples"]) == [
      (TASK.prompt(by_id[k["id"]], hint=False, few_shot=False), right(by_id[k["id"]]))
      for k in result.kept]


def test_a_hint_copied_into_the_scratchpad_is_not_kept(tmp_path, trained):
  """A model that copies the hint line into its scratchpad must not train on that line."""
  def script(ex, hint):
    return right(ex).replace("<scratch>\n", f"<scratch>\nHint: {spaced(ex.answer)}\n") \
        if hint else wrong(ex)
  _, _, result = run(tmp_path, script)
  assert len(result.kept) == 20
  assert [k for k in result.kept if "Hint" in k["rationale"]] == []


def test_p_rationalization_hints_that_share_of_the_failures(tmp_path, trained):
  """200 failures, p_rationalization=0.5: about half are asked again with the hint, and each
  one solved is kept once, counted for rationalization."""
  def script(ex, hint):
    return right(ex) if hint else wrong(ex)
  _, sampler, result = run(tmp_path, script, train=200, p_rationalization=0.5)
  plain, hinted = sampler.calls
  asked = len(hinted.asked)
  assert all(hint for _, hint in hinted.asked) and 70 <= asked <= 130
  assert result.generation.solved == set() and len(result.rationalization.solved) == asked
  assert len({k["id"] for k in result.kept}) == asked
  assert {k["source"] for k in result.kept} == {"rationalization"}


@pytest.mark.parametrize("star", [{"p_rationalization": 0.0}, {"rationalize": False}])
def test_no_rationalization_keeps_nothing_and_leaves_the_model(tmp_path, trained, star):
  """Without rationalization nothing is sampled with the hint; with nothing kept, training
  is skipped and M_n is M_{n-1}."""
  _, sampler, result = run(tmp_path, lambda ex, hint: wrong(ex), restart_from_base=False,
                           **star)
  assert [hint for call in sampler.calls for _, hint in call.asked] == [False] * 20
  assert result.kept == [] and trained == []
  assert result.train is None and result.params is MODEL


@pytest.mark.parametrize("method", [Star, Direct, SeedOnly])
@pytest.mark.parametrize("restart", [True, False])
def test_fine_tuning_starts_from_base_or_previous_model(tmp_path, trained, method, restart):
  """restart_from_base: every method trains M_0; otherwise M_{n-1}, returned with its master
  weights since the next fine-tune starts from it."""
  _, _, result = run(tmp_path, lambda ex, hint: right(ex), method=method,
                     restart_from_base=restart)
  (call,) = trained
  assert call["start"] is (BASE if restart else MODEL)
  assert call["keep_masters"] is (not restart)
  assert result.params is TRAINED and result.method == method.name


def _eval_result() -> EvalResult:
  return EvalResult(0.25, 4, [], {}, 0)


def test_direct_trains_on_every_question_bare(tmp_path, trained):
  """direct: all of D (whatever questions_per_iteration), each as the bare sum, no sampling."""
  _, sampler, result = run(tmp_path, lambda ex, hint: right(ex), method=Direct,
                           questions_per_iteration=5)
  assert sampler.calls == [] and len(result.questions) == 20
  assert texts(trained[0]["examples"]) == [
      (TASK.prompt(ex, few_shot=False), f"{spaced(ex.answer)}\n\n") for ex in result.questions]
  record = iteration_record(1, TASK, result, _eval_result())
  assert record | {"train_seconds": 0} == {
      "iteration": 1, "method": "direct", "train_questions": 20, "solved_by_generation": 0,
      "solved_by_rationalization": 0, "kept": 0, "train_examples": 20, "train_steps": 40,
      "train_loss": 0.5, "train_examples_too_long": 0, "train_tokens": 0.0,
      "train_sequences": 0, "train_sequences_per_step": 0.0, "train_tokens_per_step": 0.0,
      "sample_seconds": 0.0, "rationalize_seconds": 0.0, "train_seconds": 0,
      "eval_accuracy": 0.25, "eval_n": 4, "eval_seconds": 0.0, "eval_skipped_too_long": 0}


def test_seed_only_trains_on_the_seed_set(tmp_path, trained):
  """seed_only: P's gold rationales (pretrain.data), none of the iteration's questions."""
  _, sampler, result = run(tmp_path, lambda ex, hint: right(ex), method=SeedOnly, n=3,
                           train=40)
  seed_set = TASK.load("train", DataConfig(max_train=SEED_SET))
  assert sampler.calls == [] and result.questions == []
  assert texts(trained[0]["examples"]) == [(TASK.prompt(ex), right(ex)) for ex in seed_set]
  record = iteration_record(3, TASK, result, _eval_result())
  assert (record["method"], record["train_questions"], record["train_examples"],
          record["train_steps"]) == ("seed_only", 0, SEED_SET, round(40 * 1.2 ** 2))


def test_record_counts_what_the_script_did(tmp_path, trained):
  """Iteration 2's line in metrics.jsonl: by index mod 4 a problem is solved (0), answered
  right after a scratchpad that does not reach it (1: a failure, rationalized), wrong and
  solved with the hint (2), or wrong either way (3); twice each (samples_per_question=2: a
  question's copies are kept once). Half the eval set is answered right."""
  evals = TASK.load("eval", DataConfig(max_eval=8))

  def script(ex, hint):
    if ex.id.startswith("arith-eval"):
      return right(ex) if index(ex) % 2 == 0 else wrong(ex)
    kind = index(ex) % 4
    if hint:
      return wrong(ex) if kind == 3 else right(ex)
    return [right, unsupported, wrong, wrong][kind](ex)
  method, sampler, result = run(tmp_path, script, n=2, evals=evals, samples_per_question=2)
  questions = result.questions
  assert [ex for ex, _ in sampler.calls[1].asked] == [ex for ex in questions if index(ex) % 4]

  record = iteration_record(2, TASK, result, method.evaluate(2, result.params, False))
  kinds = [index(ex) % 4 for ex in questions]
  by_digits = {}
  for ex, kind in zip(questions, kinds):
    row = by_digits.setdefault(str(ex.meta["digits"]),
                               {"questions": 0, "generation": 0, "rationalization": 0})
    row["questions"] += 1
    row["generation"] += kind == 0
    row["rationalization"] += kind in (1, 2)
  assert len(by_digits) == 2  # one- and two-digit problems
  assert record["kept_by_digits"] == by_digits
  assert (record["solved_by_generation"], record["solved_by_rationalization"],
          record["kept"]) == (kinds.count(0), kinds.count(1) + kinds.count(2),
                              kinds.count(0) + kinds.count(1) + kinds.count(2))
  assert record["train_pass_at_1"] == (kinds.count(0) + kinds.count(1)) / len(questions)
  assert record["unsupported_by_source"] == {"generation": 2 * kinds.count(1),
                                             "rationalization": 0}
  assert record["kept_wrong_step_share"] == 0.0
  assert (record["iteration"], record["train_questions"], record["train_steps"],
          record["train_loss"], record["prompts_skipped_too_long"]) == (2, 20, 48, 0.5, 0)
  assert (record["eval_accuracy"], record["eval_n"]) == (0.5, 8)


def test_a_method_is_one_key_away_and_a_typo_names_the_nearest():
  from star_jax.runtime.errors import ConfigError
  from star_jax.star import methods

  class NoHints(Star):
    name = "no_hints_test"

    def rationalize(self, n, model, failed, rng, seed):
      return [], 0

  methods.register_method(NoHints)
  try:
    assert methods.get_method("no_hints_test") is NoHints
    with pytest.raises(ConfigError, match="did you mean 'no_hints_test'"):
      methods.get_method("no_hint_test")
  finally:
    del methods.METHODS["no_hints_test"]
  with pytest.raises(ConfigError, match="did you mean 'star'"):
    methods.get_method("stra")


def test_a_curriculum_opens_the_next_lengths_each_iteration_and_trains_on_nothing_longer(
    tmp_path, trained):
  """``star.curriculum_start=2`` (step 1) on 1-4 digit questions: iteration n draws and trains
  on questions of at most 1 + n digits, never a longer one; the held-out problems are never
  drawn. Without a curriculum every length is drawn from the start."""
  task = tasks.get_task("arithmetic", max_digits=4)
  train = task.load("train", DataConfig(max_train=60))
  evals = task.load("eval", DataConfig(max_eval=20))
  assert {task.difficulty(ex) for ex in train} == {1, 2, 3, 4}

  def script(ex, hint):  # right for every problem of any length
    return task.completion(task.gold_rationale(ex), ex)
  held_out = {ex.id for ex in evals}
  for n, top in ((1, 2), (2, 3), (3, 4)):
    trained.clear()
    sampler = ScriptedSampler(task, train + list(evals), script)
    m = Star(config(curriculum_start=2, curriculum_step=1), experiment(task, train, evals),
             sampler, tmp_path / str(n))
    result = m.iteration(n, BASE, MODEL)
    lengths = {task.difficulty(ex) for ex in result.questions}
    assert lengths == set(range(1, top + 1)), (n, lengths)
    assert not held_out & {ex.id for ex in result.questions}
    assert {ex.id for ex in result.questions} == {ex.id for ex in train
                                                  if task.difficulty(ex) <= top}
    by_id = {ex.id: ex for ex in train}
    assert max(task.difficulty(by_id[k["id"]]) for k in result.kept) == top
    assert len(trained) == 1 and len(trained[0]["examples"]) == len(result.kept)
  # The pool also bounds a random sample of it, and the direct control's questions.
  m = Star(config(curriculum_start=1, curriculum_step=2, questions_per_iteration=5),
           experiment(task, train, evals), ScriptedSampler(task, train, script), tmp_path / "s")
  picked = m.choose_questions(np.random.default_rng(0), 2)
  assert len(picked) == 5 and max(task.difficulty(ex) for ex in picked) <= 3
  # balanced_draw: the same number of each length drawn (all of a length with fewer).
  m = Star(config(curriculum_start=4, questions_per_iteration=20, balanced_draw=True),
           experiment(task, train, evals), ScriptedSampler(task, train, script), tmp_path / "b")
  pool = collections.Counter(task.difficulty(ex) for ex in m.question_pool(1))
  drawn = collections.Counter(task.difficulty(ex) for ex in m.choose_questions(
      np.random.default_rng(0), 1))
  short = min(pool, key=pool.get)
  assert sum(drawn.values()) == 20 and drawn[short] == min(pool[short], 5)
  assert max(drawn.values()) - min(v for d, v in drawn.items() if d != short) <= 1
  # star.curriculum: the hardest length of each iteration in order, the last one after it.
  m = Star(config(curriculum=(1, 3, 4)), experiment(task, train, evals),
           ScriptedSampler(task, train, script), tmp_path / "c")
  assert [max(task.difficulty(ex) for ex in m.question_pool(n)) for n in (1, 2, 3, 4)] == [
      1, 3, 4, 4]
  direct = Direct(config(curriculum_start=1), experiment(task, train, evals),
                  ScriptedSampler(task, train, script), tmp_path / "d")
  assert {task.difficulty(ex) for ex in direct.question_pool(1)} == {1}
  plain = Star(config(), experiment(task, train, evals), ScriptedSampler(task, train, script),
               tmp_path / "p")
  assert plain.question_pool(1) == train
  from star_jax.runtime.errors import ConfigError
  with pytest.raises(ConfigError, match="curriculum_start"):
    Star(config(curriculum_start=1), experiment(task, [ex for ex in train
                                                      if task.difficulty(ex) > 1], evals),
         sampler, tmp_path / "e").question_pool(1)
  with pytest.raises(ConfigError, match=r"star.curriculum=\(1, 2\): no train question"):
    Star(config(curriculum=(1, 2)), experiment(task, [ex for ex in train
                                                     if task.difficulty(ex) > 1], evals),
         sampler, tmp_path / "e").question_pool(1)


@pytest.mark.parametrize("pretrain_rate, expected", [(0.0, 1e-6), (3e-4, 3e-4)])
def test_the_warm_start_runs_at_its_own_rate(monkeypatch, tmp_path, pretrain_rate, expected):
  # pretrain.learning_rate: P's warm start at its own rate (0: train.learning_rate, the
  # paper's 1e-6 here); STaR's fine-tunes keep train.learning_rate.
  rates = []

  def finetune(trainer, params, examples, train_cfg, steps, seed, **kw):
    rates.append(train_cfg.learning_rate)
    return TRAINED, ft.FinetuneStats(steps, len(examples), 0, 1, 0.5, 0.5, 0.0)
  monkeypatch.setattr(ft, "make_trainer", lambda exp, train_cfg, steps: rates.append(
      train_cfg.learning_rate))
  monkeypatch.setattr(ft, "finetune", finetune)
  monkeypatch.setattr(seed.lora, "has_adapters", lambda params: False)  # a one-leaf stand-in
  cfg = config()
  cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(
      cfg.pretrain, steps=5, learning_rate=pretrain_rate))
  params, record = seed.warm_start(cfg, experiment(TASK, TASK.load("train", DataConfig(
      max_train=20))), tmp_path)
  assert rates == [expected, expected] and cfg.train.learning_rate == 1e-6
  assert params is TRAINED and record["pretrain_steps"] == 5
