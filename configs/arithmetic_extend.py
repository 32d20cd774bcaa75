"""STaR past the seed's lengths (Lee et al. 2025, arXiv 2502.01612): addition beyond 5 digits.

  # 5 rounds, 1-10 digits drawn, 1-12 evaluated: ~46 minutes on a 2-core CPU
  python -m star_jax.main --config=configs/arithmetic_extend.py --workdir=runs/arith_extend
  # the control: the same M_0 and steps, on 1-5 digit questions only
  python -m star_jax.main --config=configs/arithmetic_extend.py:control --workdir=runs/ext_ctl \
      --config.model.checkpoint=runs/arith_extend/checkpoints/0 --config.pretrain.steps=0
  python -m star_jax.main --config=configs/arithmetic_extend.py:right_aligned --workdir=runs/ext_r
  python -m star_jax.main --config=configs/arithmetic_extend.py:smoke --workdir=/tmp/ext_smoke
  # 4x: to 20 digits in 10 rounds (one length a round to 10, then two)
  python -m star_jax.main --config=configs/arithmetic_extend.py:4x --workdir=runs/ext4x

The base model is the arithmetic default's decoder trained from scratch on gold scratchpads of
1-5 digits only (the seed P). STaR then samples from answers alone, and each iteration opens
the next length (`star.curriculum_start` = 6, `curriculum_step` = 1): iteration n draws
questions of 1 to 5 + n digits, so the only scratchpads the model ever sees at 6 digits and
beyond are its own kept ones; the last round draws 10 (2x the seed's longest). Rows, completions
and the context are sized from the longest problem drawn and evaluated (`size_limits`), so no
kept text is too long to train on. Held-out accuracy is reported per length, 1 to 12 digits. The
`control` variant gets the same steps on 1-5 digit questions only (`curriculum_step` = 0);
`right_aligned` drops the columns from the line's start (`task_options.both_columns`), with
which no length past the seed's opens. `4x` draws to 20 digits (4x the seed's) and evaluates to
22 from the same seed P (trained at the 2x config's rows and batch, `pretrain.train`): one
length a round to 10 digits, then two (`star.curriculum` = 6, 7, ..., 10, 12, ..., 20; 10
rounds), and each round's rows as long as its longest kept text, as many a step as hold the 2x
config's tokens (`train.fit_rows`), so the early rounds train as the 2x config's do and no
round pays for rows sized for 20 digits.
Measured results and what limits them: docs/arithmetic.md ("Past the seed's lengths").
"""

import math

from star_jax.config import base_config, model_overrides, task_options
from star_jax.tasks.arithmetic import ArithmeticTask
from star_jax.tokenizer import CharTokenizer

SEED_LONGEST = 5
LONGEST = 2 * SEED_LONGEST  # the longest questions the curriculum reaches
EVAL_LONGEST = LONGEST + 2  # the eval reports two lengths no round draws
# Rounds after the one that first draws LONGEST (drawing 1 to LONGEST again): measured with 1,
# the extra round lost ground (8 digits 97 -> 89%, 11 digits 98 -> 85%; docs/arithmetic.md).
CONSOLIDATE = 0


def longest_text_tokens(options: dict, pieces, digits: int) -> tuple[int, int, int]:
  """(prompt with hint, training row, completion) in tokens of the longest ``digits``-digit
  problem (all nines: both numbers as long as they can be and a carry out of every column)
  under ``options`` with a char tokenizer of ``pieces``, and without exemplars. The row is
  what ``train.seq_len`` must hold (prompt without hint + completion, less the one token a
  row's shift drops), the completion what ``star.max_new_tokens`` must allow, the hinted
  prompt plus completion what ``model.max_seq_len`` must; a config sizes them from this."""
  task = ArithmeticTask(ArithmeticTask.Options(**dict(options)))
  nines = int("9" * digits)
  ex = task.make_example(nines, nines, "longest")
  texts = [task.prompt(ex, hint=True, few_shot=False), task.prompt(ex, few_shot=False),
           task.completion(task.gold_rationale(ex), ex)]
  tok = CharTokenizer.from_texts(texts, pieces=pieces)
  hinted, prompt = (len(tok.encode_prompt(t)) for t in texts[:2])
  completion = len(tok.encode(texts[2]))
  return hinted, prompt + completion - 1, completion


def size_limits(c, step: int = 16) -> None:
  """Rows, completions and the model's context sized from the longest problems (all nines),
  rounded up to ``step``: ``train.seq_len`` holds the longest text the curriculum can draw,
  ``star.max_new_tokens`` the longest completion the eval asks for, and ``model.max_seq_len``
  a hinted prompt with that many new tokens. Too short a row drops those examples from
  training (``train_examples_too_long``); too few new tokens cut the answer off."""
  up = lambda n: step * math.ceil(n / step)
  o, pieces = c.task_options, list(c.tokenizer.pieces)
  _, row, _ = longest_text_tokens(o, pieces, o.max_digits)
  hinted, _, completion = longest_text_tokens(o, pieces, o.eval_max_digits)
  c.train.seq_len = up(row)
  c.star.max_new_tokens = up(completion)
  c.model.overrides.max_seq_len = max(c.model.overrides.max_seq_len,
                                      up(hinted + c.star.max_new_tokens))


def get_config(variant: str = ""):
  longest = 4 * SEED_LONGEST if variant == "4x" else LONGEST
  eval_longest = longest + (EVAL_LONGEST - LONGEST)
  c = base_config("arithmetic")
  c.tokenizer.kind = "char"
  c.tokenizer.pieces = [" " + d for d in "0123456789"] + [
      "Input:\n", "Target:\n", "Hint:", "<scratch>\n", "</scratch>\n", " + ", " , ", " C: ", "C: "]
  c.model.preset = "tiny"
  # (line, column) rotary positions with two columns, one counted from the end of the line
  # above and one from the line's own start (a third of the rotary pairs each): a scratchpad
  # step reads the line above at fixed offsets whatever the length, the first step too,
  # which is what lets a longer problem be done with the steps a shorter one taught.
  c.task_options = task_options("arithmetic", positions="line_column",
                                 right_aligned_columns=True, both_columns=True,
                                 position_jitter=2,
                                 min_digits=1, max_digits=longest,
                                 eval_min_digits=1, eval_max_digits=eval_longest)
  c.model.overrides = model_overrides(d_model=128, num_layers=4, num_heads=4, num_kv_heads=4,
                                      head_dim=32, ffn_dim=512, max_seq_len=512, rope_base=100.0)
  c.data.max_train = 2000 * longest  # D: ~2,000 problems of each length, answers only
  c.data.max_eval = 40 * eval_longest  # ~40 held-out problems a length
  c.star.curriculum_start = SEED_LONGEST + 1
  c.star.curriculum_step = 1
  c.star.iterations = longest - SEED_LONGEST + CONSOLIDATE
  c.star.questions_per_iteration = 3000
  c.star.few_shot = False
  c.star.few_shot_rationalization = False
  c.star.restart_from_base = False
  c.star.steps_schedule = "linear"
  c.star.base_steps = 150
  c.star.steps_increment = 0
  # The seed P: gold scratchpads of 1-5 digits (all ~90 one-digit problems), none longer.
  c.pretrain.steps = 900
  c.pretrain.task_options = {"digit_counts": (90, 1000, 1000, 1000, 1000)}
  c.pretrain.hint_fraction = 0.3
  c.train.batch_size = 32
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 20
  c.sample.batch_size = 256
  if variant == "right_aligned":  # the columns from the line above's end only
    c.task_options.both_columns = False
  elif variant == "4x":
    # One length a round to 2x the seed's (6, ..., 10: the 2x config's rounds), then two
    # (12, ..., 20): after training to n digits the 2x run did n + 2 at 0-12% zero-shot in
    # its rounds 1-2 but at 40-61% from round 3 on; two a round from the start left the
    # newest length with nothing kept (round 2: 8 digits 0 of 247).
    c.star.curriculum = tuple(range(SEED_LONGEST + 1, LONGEST + 1)) + tuple(
        range(LONGEST + 2, longest + 1, 2))
    c.star.iterations = len(c.star.curriculum)
    # A round's rows as long as its longest kept text (192 tokens in round 1, 832 in the
    # last), as many a step as hold the 2x config's tokens (32 x 272): early rounds train as
    # the 2x config's rounds do, not at the cost of rows sized for 20 digits.
    two_x = get_config()
    c.train.fit_rows = two_x.train.batch_size * two_x.train.seq_len
    # The seed P trained as the 2x config trains it (its rows and batch), so M_0 is its M_0.
    c.pretrain.train = {"seq_len": two_x.train.seq_len, "batch_size": two_x.train.batch_size,
                        "fit_rows": 0}
  elif variant == "control":
    c.star.curriculum_step = 0  # the same steps, on 1-5 digit questions only
    c.star.curriculum_start = SEED_LONGEST
  elif variant == "smoke":
    c.model.overrides = model_overrides(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                        head_dim=16, ffn_dim=128, max_seq_len=256,
                                        rope_base=100.0)
    c.task_options.max_digits = c.task_options.eval_max_digits = 4
    c.data.max_train, c.data.max_eval = 80, 24
    c.star.curriculum_start, c.star.iterations = 3, 2
    c.star.questions_per_iteration = 0
    c.star.base_steps = 6
    c.pretrain.steps = 200
    c.pretrain.task_options = {"digit_counts": (40, 100)}
    c.train.batch_size = 8
    c.train.learning_rate = 3e-3
    c.sample.batch_size = 64
    c.checkpoint_every = 50
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: 4x, control, right_aligned, smoke)")
  size_limits(c)
  return c
