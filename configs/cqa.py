"""CommonsenseQA (STaR paper section 4.3).

Put the official train_rand_split.jsonl and dev_rand_split.jsonl in data.dir.
  python -m star_jax.main --config=configs/cqa.py --workdir=runs/cqa --config.data.dir=data/cqa
"""

from star_jax.defaults import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.task = "cqa"
  c.data.dir = "data/commonsense_qa"
  # Until pre-trained checkpoints are wired in, a random model and a tokenizer built from the data.
  c.model.preset = "tiny"
  c.model.overrides = {"max_seq_len": 2048}
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 4096
  c.star.iterations = 10
  c.train.seq_len = 1024
  c.train.learning_rate = 1e-6
  c.sample.batch_size = 32
  if variant == "smoke":
    c.model.overrides = {"max_seq_len": 1024}
    c.tokenizer.vocab_size = 512
    c.data.max_train, c.data.max_eval = 24, 10
    c.data.download = False
    c.star.iterations = 2
    c.star.max_new_tokens = 24
    c.star.base_steps = 4
    c.train.seq_len = 512
    c.train.batch_size = 8
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 2
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  return c
