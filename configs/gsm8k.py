"""GSM8K (STaR paper section 4.2).

Put the official train.jsonl and test.jsonl in data.dir:
  python -m star_jax.main --config=configs/gsm8k.py --workdir=runs/gsm8k --config.data.dir=data/gsm8k
or hold out part of the train file as the eval set (test.jsonl then is not read):
  python -m star_jax.main --config=configs/gsm8k.py --workdir=runs/gsm8k \
      --config.data.train_file=PATH/train.jsonl --config.data.holdout=500

The ``warm`` variant is the P << D structure for a small model (docs/real_model.md): a
warm start on P, a few hundred official solutions of the train split, then STaR on D, the
other train questions, from their answers alone (``pretrain.disjoint``):
  python -m star_jax.preflight --config=configs/gsm8k.py:warm --workdir=runs/gsm8k_warm \
      --config.data.train_file=PATH/train.jsonl --questions=100 --samples=2
  python -m star_jax.main --config=configs/gsm8k.py:warm --workdir=runs/gsm8k_warm \
      --config.data.train_file=PATH/train.jsonl
"""

from star_jax.config import text_task_config


def get_config(variant: str = ""):
  if variant != "warm":
    return text_task_config("gsm8k", "data/gsm8k", variant)
  c = text_task_config("gsm8k", "data/gsm8k", "")
  c.data.holdout = 200  # held out of the train file, never in P or D
  # ~3.5 passes over P: a SmolLM2 text is 143 tokens at the median (356 the longest), so a
  # 512-token row packs ~3.5 of them.
  c.pretrain.steps = 40
  c.pretrain.data = {"max_train": 300}  # P: 300 official solutions
  c.pretrain.disjoint = True  # D: the other train questions, answers only
  c.pretrain.hint_fraction = 0.3  # so M_0 can read the hint when rationalizing
  c.pretrain.learning_rate = 1e-4
  c.star.few_shot = c.star.few_shot_rationalization = False  # M_0 reads the bare question
  c.star.iterations = 3
  c.star.questions_per_iteration = 256
  c.star.restart_from_base = False
  c.star.steps_schedule, c.star.base_steps, c.star.steps_increment = "linear", 30, 0
  c.star.max_new_tokens = 256  # the official solutions: 84 tokens at the median, 262 the longest
  c.train.seq_len = 512
  c.train.batch_size, c.train.grad_accum = 2, 4  # 8 rows a step in ~6 GiB on a CPU
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 10
  return c
