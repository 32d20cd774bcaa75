"""CommonsenseQA (STaR paper section 4.3).

Put the official train_rand_split.jsonl and dev_rand_split.jsonl in data.dir:
  python -m star_jax.main --config=configs/cqa.py --workdir=runs/cqa --config.data.dir=data/cqa
or hold out part of the train file as the eval set (the dev split then is not read):
  python -m star_jax.main --config=configs/cqa.py --workdir=runs/cqa \
      --config.data.train_file=PATH/train_rand_split.jsonl --config.data.holdout=1000
"""

from star_jax.config import text_task_config


def get_config(variant: str = ""):
  return text_task_config("cqa", "data/commonsense_qa", variant)
