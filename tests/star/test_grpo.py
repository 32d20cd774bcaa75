"""GRPO and Reinforce-Rej (star/grpo.py, star/policy.py): advantages, which groups train, the
batch the loss reads (exactly the sampled tokens, scored as the sampler scored them), the
methods end to end on a tiny arithmetic run, and a killed run resumed to the same results."""

import json
import os
import signal
import sys

import jax
import numpy as np
import pytest

from helpers.runs import load_config, run_main, run_results
from star_jax import config as config_lib, star
from star_jax.engine.losses import PolicyGradient
from star_jax.engine.optim import OptimConfig
from star_jax.engine.positions import draws_positions
from star_jax.engine.trainer import Trainer
from star_jax.experiment.build import build, make_sampler
from star_jax.runtime.errors import ConfigError
from star_jax.sampling import SamplingParams
from star_jax.star import policy
from star_jax.star.methods import get_method

REWARDS = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0]], np.float32)


@pytest.mark.parametrize("kind", ["grpo", "dr_grpo"])
def test_groups_all_right_or_all_wrong_have_zero_advantage(kind):
  adv = policy.advantages(REWARDS, kind)
  assert (adv[1] == 0).all() and (adv[2] == 0).all()
  assert (adv[0] * (2 * REWARDS[0] - 1) > 0).all()  # right above the mean, wrong below
  np.testing.assert_allclose(adv.sum(axis=1), 0, atol=1e-6)
  if kind == "grpo":  # unit (unbiased) std within a mixed group, up to TRL's 1e-4
    np.testing.assert_allclose(adv[0].std(ddof=1), 1.0, rtol=1e-3)


def test_reinforce_rewards_are_plus_minus_one_and_rej_drops_exactly_the_uniform_groups():
  np.testing.assert_array_equal(policy.advantages(REWARDS, "reinforce"), 2 * REWARDS - 1)
  assert policy.trained_groups(REWARDS, drop_uniform=True) == [0, 3]
  assert policy.trained_groups(REWARDS, drop_uniform=False) == [0, 1, 2, 3]
  right, wrong = policy.uniform_groups(REWARDS)
  assert right.tolist() == [False, True, False, False]
  assert wrong.tolist() == [False, False, True, False]
  with pytest.raises(ValueError, match="advantage"):
    policy.advantages(REWARDS, "ppo")


def test_the_batch_holds_the_sampled_tokens_and_masks_the_prompt():
  batch = policy.policy_batch([[5, 6, 7], [9]], [[20, 21], [30, 31, 32, 2]], [0.5, -1.0],
                              rows=4, max_len=64)
  assert batch["tokens"].shape == (1, 4, 32) and batch["advantages"].shape == (1, 4, 32)
  np.testing.assert_array_equal(batch["tokens"][0, 0, :4], [5, 6, 7, 20])
  np.testing.assert_array_equal(batch["targets"][0, 0, :4], [6, 7, 20, 21])
  np.testing.assert_array_equal(batch["loss_mask"][0, 0, :5], [0, 0, 1, 1, 0])
  np.testing.assert_array_equal(batch["loss_mask"][0, 1, :5], [1, 1, 1, 1, 0])
  assert batch["loss_mask"][0, 2:].sum() == 0  # padding rows carry no loss
  np.testing.assert_array_equal(batch["advantages"][0, :, 0], [0.5, -1.0, 0, 0])
  np.testing.assert_array_equal(batch["advantages"][0, 1, :5], [-1.0] * 4 + [0.0])
  # more rows than a micro-batch holds: more micro-batches
  assert policy.policy_batch([[1]] * 5, [[2]] * 5, [0.0] * 5, rows=4, max_len=64)[
      "tokens"].shape == (2, 4, 32)
  with pytest.raises(ValueError, match="exceeds max_len"):
    policy.policy_batch([[1] * 40], [[2] * 40], [1.0], rows=4, max_len=64)


def test_packed_rows_hold_every_sequence_apart_in_fewer_token_slots():
  """rl.pack_rows: each sequence once, as a segment of its own (positions from 0, its own
  advantage), rows of a bucketed length, fewer slots than one a row when lengths differ."""
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 99, 5).tolist() for _ in range(8)]
  completions = [rng.integers(3, 99, n).tolist() for n in (150, 20, 30, 170, 10, 40, 25, 60)]
  adv = [float(i) for i in range(1, 9)]
  one = policy.policy_batch(prompts, completions, adv, rows=8, max_len=512)
  packed = policy.policy_batch(prompts, completions, adv, rows=8, max_len=512, pack=True)
  assert one["tokens"].shape == (1, 8, 192)
  M, R, L = packed["tokens"].shape
  assert M * R * L < 8 * 192 and L % policy.ROW_BUCKET == 0 and R in (8, 4, 2)
  found = []
  for row in range(R):
    for seg in range(1, packed["segment_ids"][0, row].max() + 1):
      at = np.flatnonzero(packed["segment_ids"][0, row] == seg)
      assert (np.diff(at) == 1).all()  # contiguous
      np.testing.assert_array_equal(packed["positions"][0, row, at], np.arange(len(at)))
      a = packed["advantages"][0, row, at]
      i = int(a[0]) - 1
      assert (a == adv[i]).all()
      seq = prompts[i] + completions[i]
      np.testing.assert_array_equal(packed["tokens"][0, row, at], seq[:-1])
      np.testing.assert_array_equal(packed["targets"][0, row, at], seq[1:])
      assert packed["loss_mask"][0, row, at].sum() == len(completions[i])
      found.append(i)
  assert sorted(found) == list(range(8))
  # the layout's choice: rows a multiple of the mesh's batch shards
  R4, _, _ = policy.packed_layout([100] * 8, rows=8, max_len=512, divisor=4)
  assert R4 in (8, 4)
  with pytest.raises(ValueError, match="exceeds max_len"):
    policy.policy_batch([[1] * 40], [[2] * 40], [1.0], rows=4, max_len=64, pack=True)


def _smoke(method="grpo", **star_keys):
  c = load_config("arithmetic", "smoke")
  c.data.max_train, c.data.max_eval = 16, 12
  c.pretrain.steps = 30
  c.star.iterations, c.star.base_steps, c.star.steps_increment = 1, 3, 0
  c.star.method, c.star.samples_per_question, c.star.temperature = method, 4, 1.0
  for k, v in star_keys.items():
    setattr(c.star, k, v)
  return c


def test_the_loss_scores_the_sampled_tokens_as_the_sampler_drew_them(tmp_path):
  """The policy's log-probs in the loss (the sampler's positions, a position scheme's
  included) equal the sampler's own for every sampled token."""
  cfg = config_lib.load(_smoke())
  exp = build(cfg, tmp_path)
  sampler = make_sampler(exp, cfg)
  task, tok = exp.task, exp.tokenizer
  prompts = [tok.encode_prompt(task.prompt(q, hint=False, few_shot=False))
             for q in exp.train_set[:4]]
  # at 0.7, where the tempered and the model's own log-probs differ by up to ~1 nat
  out = sampler.sample(exp.params, prompts, task.max_new_tokens, SamplingParams(0.7), n=2,
                       seed=3, stop_strings=task.stop_strings, decode_fn=tok.decode)
  rows = [(prompts[i], out.sequences(i, j), 1.0) for i in range(4) for j in range(2)]
  batch = policy.policy_batch(*zip(*rows), rows=8, max_len=sampler.cfg.max_seq_len)
  trainer = Trainer(exp.graphdef, exp.mesh, OptimConfig())
  logp = np.asarray(trainer.logprobs(exp.params, batch, 0.7))[0]
  untempered = np.asarray(trainer.logprobs(exp.params, batch, 1.0))[0]
  assert np.abs(logp - untempered)[batch["loss_mask"][0] > 0].max() > 0.05
  assert batch["loss_mask"].sum() == sum(len(c) for _, c, _ in rows) > 0
  for r in range(8):
    i, j = divmod(r, 2)
    n = len(out.sequences(i, j))
    np.testing.assert_allclose(logp[r][batch["loss_mask"][0, r] > 0], out.logprobs[i, j, :n],
                               atol=1e-4)


def test_the_ratio_compares_one_text_at_the_positions_its_update_draws(tmp_path):
  """train.jitter_positions, on the arithmetic task's line/column jitter: with it, the sampling
  policy's log-probs taken at the step's key give a ratio of exactly 1 before the update, and
  taken at the sampler's positions they do not (another policy); without it the loss scores
  at the sampler's positions, and those give exactly 1."""
  cfg = config_lib.load(_smoke())
  exp = build(cfg, tmp_path)
  assert draws_positions(exp.model_cfg)
  task, tok = exp.task, exp.tokenizer
  prompts = [tok.encode_prompt(task.prompt(q, hint=False, few_shot=False))
             for q in exp.train_set[:4]]
  out = make_sampler(exp, cfg).sample(exp.params, prompts, task.max_new_tokens,
                                      SamplingParams(0.7), n=2, seed=3,
                                      stop_strings=task.stop_strings, decode_fn=tok.decode)
  rows = [(prompts[i], out.sequences(i, j), 1.0) for i in range(4) for j in range(2)]
  batch = policy.policy_batch(*zip(*rows), rows=8, max_len=exp.model_cfg.max_seq_len)
  losses = {}
  for jitter, keyed in ((True, True), (True, False), (False, False)):
    loss = PolicyGradient(temperature=0.7, old_logprobs=True, jitter=jitter)
    trainer = Trainer(exp.graphdef, exp.mesh, OptimConfig(learning_rate=1e-3), loss=loss)
    state = trainer.init(exp.params, copy=True)
    step = int(state.step) if keyed else None
    batch["old_logprobs"] = trainer.logprobs(trainer.forward_params(state), batch, 0.7,
                                             step=step)
    _, m = trainer.step(state, batch)
    losses[jitter, keyed] = (float(m["loss"]), float(m["clip_fraction"]))
  for case in ((True, True), (False, False)):
    assert losses[case][0] == pytest.approx(-1.0, abs=1e-5) and losses[case][1] == 0.0
  assert abs(losses[True, False][0] + 1.0) > 1e-3  # the sampler's positions: another policy


def test_a_policy_step_samples_the_weights_its_loss_computes_with(tmp_path):
  """bfloat16 with float32 masters: after an update the masters hold values bfloat16 cannot,
  and the stochastically rounded copy (a saved model's) differs from the nearest-rounded one
  the loss computes with. The step samples the latter: the policy its log-probs score."""
  c = _smoke()
  c.model.overrides = dict(c.model.overrides, param_dtype="bfloat16", dtype="bfloat16")
  cfg = config_lib.load(c)
  exp = build(cfg, tmp_path)
  sampler = make_sampler(exp, cfg)
  method = get_method("grpo")(cfg, exp, sampler, tmp_path)
  trainer = Trainer(exp.graphdef, exp.mesh, OptimConfig(learning_rate=1e-3),
                    master_dtype="float32", rounding="stochastic", loss=PolicyGradient())
  state = trainer.init(exp.params, copy=True)
  tok, task = exp.tokenizer, exp.task
  prompts = [tok.encode_prompt(task.prompt(q, hint=False, few_shot=False))
             for q in exp.train_set[:8]]
  batch = policy.policy_batch(prompts, [tok.encode("1 2\n")] * 8, [1.0, -1.0] * 4,
                              rows=8, max_len=exp.model_cfg.max_seq_len)
  state, _ = trainer.step(state, batch)
  seen = []
  sample = sampler.sample
  sampler.sample = lambda params, *a, **k: (seen.append(params), sample(params, *a, **k))[1]
  method.ask(np.random.default_rng(0), trainer, state, exp.train_set)
  leaves = lambda tree: [np.asarray(x, np.float32) for x in jax.tree.leaves(tree)]
  for a, b in zip(leaves(seen[0]), leaves(trainer.forward_params(state))):
    np.testing.assert_array_equal(a, b)
  assert any((a != b).any() for a, b in zip(leaves(trainer.model_params(state)),
                                            leaves(trainer.forward_params(state))))


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
  """checkpoints/0 of a :smoke run with no iterations: the M_0 the method runs start from."""
  workdir = tmp_path_factory.mktemp("m0")
  c = _smoke()
  # :smoke's own warm start: it solves the 1-digit sums, so some groups are mixed
  c.star.iterations, c.pretrain.steps = 0, 200
  star.run(c, workdir)
  return str(workdir / "checkpoints" / "0")


@pytest.mark.parametrize("method,rl,dtype", [
    ("grpo", {"inner_updates": 2, "kl_beta": 0.04}, ""),
    ("grpo", {"advantage": "dr_grpo", "questions_per_step": 3}, "bfloat16"),
    ("reinforce_rej", {"questions_per_step": 8}, ""),  # more groups: some are mixed
])
def test_policy_methods_run_end_to_end(tmp_path, base_model, method, rl, dtype):
  """Each from one M_0; in bfloat16 the trainer holds float32 masters and every step samples
  them rounded to the nearest value, as its loss computes with them."""
  c = _smoke(method)
  c.model.checkpoint, c.model.dtype, c.pretrain.steps = base_model, dtype, 0
  for k, v in rl.items():
    setattr(c.rl, k, v)
  metrics = star.run(c, tmp_path)
  last = metrics[-1]
  assert last["method"] == method and last["train_steps"] == 3 == last["rl_policy_steps"]
  steps = [json.loads(l) for l in open(os.path.join(tmp_path, "iter_001", "policy_steps.jsonl"))]
  assert [s["step"] for s in steps] == [1, 2, 3]
  q = rl.get("questions_per_step", c.train.batch_size // 4)
  assert all(s["questions"] == q for s in steps)
  for s in steps:
    assert 0 <= s["reward_mean"] <= 1 and s["tokens_sampled"] > 0
    if method == "reinforce_rej":  # only groups neither all right nor all wrong train
      mixed = round(q * (1 - s["all_right_share"] - s["all_wrong_share"]))
      assert s["trained_rows"] == 4 * mixed
    else:
      assert s["trained_rows"] == 4 * q
    if s["trained_rows"]:
      assert {"loss", "kl", "entropy", "clip_fraction", "grad_norm"} <= set(s)
  # the test exercised a policy gradient: some group was mixed, some row carried an advantage
  assert any(s["all_right_share"] + s["all_wrong_share"] < 1 for s in steps)
  assert sum(s["rows_with_advantage"] for s in steps) > 0
  if method == "grpo":  # the updates reach the model the next step scores, bfloat16 included
    assert max(s.get("kl", 0.0) for s in steps[1:]) > 0
  assert last["tokens_sampled"] == sum(s["tokens_sampled"] for s in steps)
  assert last["rl_trained_rows"] == sum(s["trained_rows"] for s in steps) > 0
  assert last["rl_advantage"] == {"reinforce_rej": "reinforce"}.get(method,
                                                                     rl.get("advantage", "grpo"))
  assert set(last["rl_reward_by_digits"]) <= {"1", "2", "3"}


def test_bad_policy_settings_are_refused(tmp_path):
  for keys, match in [({"samples_per_question": 1}, "samples_per_question must be >= 2"),
                      ({"temperature": 0.0}, "temperature > 0"),
                      ({"samples_per_question": 3}, "not a multiple of 3")]:
    c = _smoke(**keys)
    with pytest.raises(ConfigError, match=match):
      star.run(c, tmp_path / "x")
    assert not (tmp_path / "x" / "metrics.jsonl").exists()
  assert get_method("reinforce_rej").drop_uniform


# GRPO with the hint: GRPO's loop and step, plus the hinted retries (which must resume too)
CMD = [sys.executable, "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke",
       "--config.star.method=grpo_hint", "--config.star.samples_per_question=4",
       "--config.star.temperature=1.0", "--config.rl.kl_beta=0.04", "--config.pretrain.steps=40"]


def _run(workdir, failpoint=None, *args):
  return run_main(CMD, workdir, failpoint, *args)


def test_a_killed_grpo_run_resumes_to_the_uninterrupted_runs_results(tmp_path):
  clean = tmp_path / "clean"
  proc = _run(clean)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = [json.loads(l) for l in open(clean / "metrics.jsonl")]
  assert metrics[1]["method"] == "grpo_hint" and metrics[1]["rl_hint_groups"] > 0
  killed = tmp_path / "killed"
  # 40 pretraining steps, then iteration 1 has 6 policy steps and iteration 2 has 8; each
  # rerun counts the steps it runs afresh.
  # (synchronous saves: an asynchronous one may still be in flight at the kill)
  proc = _run(killed, "train_step:45", "--config.checkpoint_every=4",
              "--config.checkpoint_async=False")  # iteration 1, step 5, after its checkpoint
  assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
  # a preemption notice at iteration 2, step 2, before any checkpoint: saved there, exit 0
  proc = _run(killed, "train_step:4:TERM", "--config.checkpoint_every=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "iter 1 grpo_hint: resuming from the checkpoint at step 4 of 6" in proc.stderr
  assert "preempted at iteration 2, phase grpo_hint, step 2 of 8" in proc.stderr
  proc = _run(killed)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "iter 2 grpo_hint: resuming from the checkpoint at step 2 of 8" in proc.stderr
  assert run_results(killed) == run_results(clean)


TRICE = [sys.executable, "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke",
         "--config.star.method=trice", "--config.star.temperature=1.0",
         "--config.pretrain.steps=40"]


def test_trice_runs_end_to_end_and_a_killed_run_resumes_to_the_uninterrupted_runs_results(
    tmp_path):
  clean = tmp_path / "clean"
  proc = run_main(TRICE, clean)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = [json.loads(l) for l in open(clean / "metrics.jsonl")]
  first, second = metrics[1], metrics[2]
  assert first["method"] == "trice" and first["rl_policy_steps"] == 6
  # a hinted try the first time a question is drawn, never twice
  assert first["trice_init_asked"] > 0 and first["trice_init_kept"] > 0
  hinted = json.load(open(clean / "iter_002" / "trice_memory.json"))["hinted"]
  assert len(hinted) == first["trice_init_asked"] + second["trice_init_asked"]
  assert first["tokens_sampled"] > first["trice_init_tokens_sampled"] > 0
  for n in (1, 2):
    saved = json.load(open(clean / f"iter_{n:03d}" / "trice_memory.json"))
    assert saved["memory"] and not any("Hint" in t for t in saved["memory"].values())
    assert not (clean / f"iter_{n:03d}" / "trice_memory").exists()  # the per-step copies
  assert set(json.load(open(clean / "iter_001" / "trice_memory.json"))["memory"]) <= set(
      json.load(open(clean / "iter_002" / "trice_memory.json"))["memory"])  # only replaced
  killed = tmp_path / "killed"
  proc = run_main(TRICE, killed, "train_step:45", "--config.checkpoint_every=4",
                  "--config.checkpoint_async=False")  # iteration 1, step 5, after its checkpoint
  assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
  proc = run_main(TRICE, killed)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "iter 1 trice: resuming from the checkpoint at step 4 of 6" in proc.stderr
  assert run_results(killed) == run_results(clean)


def test_the_rl_comparison_gives_mean_and_sd_over_training_seeds(tmp_path, capsys):
  from benchmarks import rl_comparison

  def write(name, accs, rl=None):
    d = tmp_path / name
    d.mkdir()
    with open(d / "metrics.jsonl", "w") as f:
      for i, a in enumerate(accs):
        m = {"iteration": i, "eval_accuracy": a, "accuracy_by_digits": {"5": a / 2},
             "train_seconds": 60.0}
        if i:
          m.update({"train_steps": 150, "tokens_sampled": 1000 * i, **(rl or {})})
        f.write(json.dumps(m) + "\n")
    return str(d)

  rl = {"rl_trained_rows": 4800, "rl_reward_mean": 0.5, "rl_reward_first": 0.4,
        "rl_reward_last": 0.6, "rl_all_wrong_share": 0.25, "rl_all_right_share": 0.5,
        "rl_kl": 0.01}
  counted = {"train_sequences_per_step": 64.0, "train_tokens_per_step": 3000.0}
  star_runs = [write("s0", [0.5, 0.7], counted), write("s1", [0.5, 0.9], counted)]
  grpo_runs = [write("g0", [0.5, 0.6], rl)]
  rl_comparison.main(["--runs", "star=" + ",".join(star_runs), "grpo=" + grpo_runs[0],
                      "--plot", str(tmp_path / "p.png")])
  out = capsys.readouterr().out
  assert "| star | 2 | 50.0 ± 0.0 | 80.0 ± 14.1 | 1 |" in out
  assert "| grpo | 1 | 50.0 | 60.0 | 1 |" in out
  assert "| star | 1 | 40.0 ± 7.1 | — |" in out  # 5 digits at the last iteration, no vote
  assert "| star | 1000 | 150 | 64.0 | 3000 | — | — | — | — |" in out
  assert "| grpo | 1000 | 150 | 32.0 | — | 0.400 -> 0.600 | 0.25 | 0.50 | 0.010 |" in out
  assert (tmp_path / "p.png").exists()
