"""GSM8K (STaR paper section 4.2).

Put the official train.jsonl and test.jsonl in data.dir:
  python -m star_jax.main --config=configs/gsm8k.py --workdir=runs/gsm8k --config.data.dir=data/gsm8k
or hold out part of the train file as the eval set (test.jsonl then is not read):
  python -m star_jax.main --config=configs/gsm8k.py --workdir=runs/gsm8k \
      --config.data.train_file=PATH/train.jsonl --config.data.holdout=500
"""

from star_jax.config import text_task_config


def get_config(variant: str = ""):
  return text_task_config("gsm8k", "data/gsm8k", variant)
