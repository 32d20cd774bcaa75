"""n-digit addition with scratchpads (STaR paper section 4.1), from scratch on a CPU.

  python -m star_jax.main --config=configs/arithmetic.py --workdir=runs/arith
  python -m star_jax.main --config=configs/arithmetic.py:smoke --workdir=/tmp/arith_smoke
"""

from star_jax.defaults import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.task = "arithmetic"
  c.tokenizer.kind = "char"  # one token per digit, space and symbol
  c.model.preset = "tiny"
  c.model.overrides = {"d_model": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 4,
                       "head_dim": 32, "ffn_dim": 512, "max_seq_len": 512}
  c.data.max_train = 2000
  c.data.max_eval = 250
  c.star.iterations = 4
  c.star.few_shot = False  # the warm-started base model reads the bare problem
  c.star.few_shot_rationalization = False
  c.star.max_new_tokens = 200
  c.star.steps_schedule = "linear"  # paper: 300 + 20 per iteration
  c.star.base_steps = 150
  c.star.steps_increment = 20
  # The "pre-trained" base model: gold scratchpads on short problems only.
  c.pretrain.steps = 300
  c.pretrain.data = {"max_train": 1000, "min_digits": 1, "max_digits": 2, "seed": 1}
  c.train.seq_len = 256
  c.train.batch_size = 16
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 20
  c.sample.batch_size = 128
  if variant == "smoke":
    c.model.overrides = {"d_model": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                         "head_dim": 16, "ffn_dim": 128, "max_seq_len": 256}
    c.data.max_train, c.data.max_eval = 48, 40
    c.data.max_digits = c.data.eval_max_digits = 3
    c.star.iterations = 2
    c.star.max_new_tokens = 96
    c.star.base_steps, c.star.steps_increment = 6, 2
    c.pretrain.steps = 200
    c.pretrain.data = {"max_train": 400, "min_digits": 1, "max_digits": 1, "seed": 1}
    c.train.seq_len = 128
    c.train.batch_size = 8
    c.train.learning_rate = 3e-3
    c.sample.batch_size = 64
    c.sample.shard_size = 32  # several shards, so the kill-and-resume test has some to lose
    c.checkpoint_every = 4
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  return c
