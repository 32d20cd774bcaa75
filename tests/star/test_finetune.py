"""Training and sampling agree on the text format: overfit examples come back verbatim."""

import dataclasses

import numpy as np

from conftest import mesh_of
from star_jax.config import base_config, load
from star_jax.data import DataConfig
from star_jax.engine import batching, params as params_lib
from star_jax.engine.batching import TrainExample
from star_jax.engine.model_config import get_preset
from star_jax.engine.trainer import Trainer
from star_jax.sampling import Sampler, SamplingParams
from star_jax.star import finetune as ft, rollout
from star_jax.tasks import get_task
from star_jax.tokenizer import CharTokenizer


def test_overfit_examples_are_reproduced_by_the_sampler():
  task = get_task("arithmetic", max_new_tokens=120, max_digits=3)
  exs = task.load("train", DataConfig(max_train=6))
  tok = CharTokenizer.from_texts(
      [task.prompt(e, hint=True) + task.completion(task.gold_rationale(e), e) for e in exs])
  cfg = get_preset("tiny", vocab_size=128, max_seq_len=256)
  mesh = mesh_of((2, 2, 2))
  graphdef, params = params_lib.init_params(cfg, mesh)
  tc = dataclasses.replace(load(base_config()).train, seq_len=160, learning_rate=3e-3,
                           warmup_steps=5, batch_size=8)
  examples = ft.training_examples(task, tok, [(e, task.gold_rationale(e)) for e in exs],
                                  few_shot=False)
  trainer = Trainer(graphdef, mesh, ft.optim_config(tc, 200))
  before = [np.asarray(x).copy() for x in __import__("jax").tree.leaves(params)]
  trained, stats = ft.finetune(trainer, params, examples, tc, 200, seed=0)
  assert stats.final_loss < 0.01 and stats.examples == 6
  # what it trained on: each step's 8 rows hold the six (and two padding rows)
  assert stats.sequences == 200 * 6
  assert stats.tokens == 200 * sum(len(e.completion) for e in examples)
  # finetune trains a copy: the base parameters are untouched (STaR restarts from them).
  for a, b in zip(before, __import__("jax").tree.leaves(params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  sampler = Sampler(cfg, graphdef, mesh, end_ids=tok.end_ids, pad_id=tok.pad_id, batch_size=8)
  gens, skipped = rollout.generate(task, tok, sampler, trained, exs, hint=False, few_shot=False,
                                   sampling=SamplingParams(), n=1, seed=0, desc="check")
  assert skipped == 0
  for g in gens:
    assert g.texts[0] == task.completion(task.gold_rationale(g.example), g.example)
    assert g.correct[0]


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  import pytest

  from star_jax.engine import batching
  from star_jax.hub.checkpointer import Checkpointer
  cfg = get_preset("tiny")
  mesh = mesh_of((1, 1, 1))
  graphdef, params = params_lib.init_params(cfg, mesh)
  tc = dataclasses.replace(load(base_config()).train, seq_len=16, learning_rate=1e30,
                           warmup_steps=0, batch_size=8, clip_norm=1e30)
  examples = [batching.TrainExample([1, 2, 3], [4, 5, 6])] * 8
  trainer = Trainer(graphdef, mesh, ft.optim_config(tc, 20))
  with pytest.raises(FloatingPointError, match="loss became nan at step 1; no checkpoint"):
    ft.finetune(trainer, params, examples, tc, 20, seed=0, ckpt_dir=str(tmp_path / "ck"),
                checkpoint_every=1)
  # The state after step 1 gives NaN: its checkpoint is not kept (tests/star/test_faults.py).
  assert Checkpointer(str(tmp_path / "ck")).all_steps() == []


def test_rows_a_mesh_cannot_split_are_regrouped_keeping_the_rows_per_step():
  assert ft.micro_batching(1, 8, 8) == (8, 1)  # the text configs' 1 x 8 on 8 devices
  assert ft.micro_batching(1, 8, 4) == (4, 2)
  assert ft.micro_batching(8, 1, 4) == (8, 1)  # divisible: as configured
  assert ft.micro_batching(3, 2, 4) == (4, 2)  # 6 rows: rounded up to whole micro-batches


def test_fit_rows_trains_on_rows_as_long_as_the_longest_example():
  from star_jax.engine import batching
  cfg = get_preset("tiny")
  mesh = mesh_of((1, 1, 1))
  graphdef, params = params_lib.init_params(cfg, mesh)
  tc = dataclasses.replace(load(base_config()).train, seq_len=256, batch_size=4,
                           warmup_steps=0)
  short = [batching.TrainExample([1, 2, 3], [4, 5, 6])] * 40  # 5 tokens a row each
  long = batching.TrainExample(list(range(1, 60)), [7] * 20)  # 78 tokens
  fit = dataclasses.replace(tc, fit_rows=512)  # 512 tokens a step
  assert ft.fitted(short, tc) == tc  # off: as configured
  assert (ft.fitted(short, fit).seq_len, ft.fitted(short, fit).batch_size) == (64, 8)
  assert (ft.fitted(short + [long], fit).seq_len, ft.fitted(short + [long], fit).batch_size
          ) == (128, 4)
  capped = ft.fitted(short + [long], dataclasses.replace(fit, seq_len=100))  # seq_len: a cap
  assert (capped.seq_len, capped.batch_size) == (100, 5)
  trainer = Trainer(graphdef, mesh, ft.optim_config(tc, 2))
  _, whole = ft.finetune(trainer, params, short, tc, 2, seed=0)
  _, fitted = ft.finetune(trainer, params, short, fit, 2, seed=0)
  assert (whole.rows, fitted.rows) == (1, 4)  # 40 x 5 tokens: one row of 256, 12 a row of 64
  assert fitted.examples == whole.examples == 40 and fitted.too_long == 0
  assert fitted.tokens == whole.tokens == 2 * 40 * 3  # every example's completion, each step


def test_sequences_trained_count_packed_segments_with_a_loss_token():
  examples = [TrainExample([1, 2], [3, 4]), TrainExample([5], [6, 7, 8]),
              TrainExample([9, 9, 9], [10])]
  packed = batching.pack(examples, 8, pack_rows=True)
  assert len(packed.batch["tokens"]) < 3  # several a row
  assert batching.count_sequences(packed.batch) == 3
  one_a_row = batching.pack(examples, 8, pack_rows=False)
  assert batching.count_sequences(one_a_row.batch) == 3
  empty = {k: np.zeros_like(v) for k, v in packed.batch.items()}  # padding rows only
  assert batching.count_sequences(empty) == 0
