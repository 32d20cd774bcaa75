"""n-digit addition with SmolLM2-135M-Instruct and few-shot scratchpads (paper section 4.1).

  python -m star_jax.preflight --config=configs/arithmetic_smollm2.py --questions=40 --samples=2
  python -m star_jax.main --config=configs/arithmetic_smollm2.py --workdir=runs/arith_smollm2
  python -m star_jax.main --config=configs/arithmetic_smollm2.py:smoke --workdir=/tmp/as_smoke

No pretraining of ours: M_0 is the instruct model prompted with scratchpads of problems that
have the query's number of digits (task_options.shots), as the paper prompted GPT-J. STaR
then samples 1-5 digit problems from answers alone; fine-tuned models read the bare problem.
Measured numbers and what was tried: docs/arithmetic.md, section "SmolLM2-135M, few-shot".
"""

from star_jax.config import base_config, model_overrides


def get_config(variant: str = ""):
  c = base_config("arithmetic")
  # Three exemplars of the query's length: a 5-digit hinted prompt is ~640 SmolLM2 tokens
  # (every digit and every space is its own token), so more shots cost prefill time.
  c.task_options.shots = 3
  c.model.checkpoint = "smollm2-135m-instruct"
  c.model.overrides = model_overrides(max_seq_len=2048)
  c.data.max_train = 5000  # the pool STaR samples its questions from
  c.data.max_eval = 40  # ~8 distinct held-out problems per length: a 2-core CPU's budget
  c.star.iterations = 3
  c.star.questions_per_iteration = 48  # minutes of sampling per iteration on 2 CPU cores
  c.star.few_shot = True  # M_0 reads the exemplars...
  c.star.few_shot_rationalization = True  # ...with hints when rationalizing
  c.star.few_shot_in_training = False  # ...M_n learns the bare format from the kept texts
  # Continue from M_{n-1}: ~12 steps an iteration is all 2 cores allow, and restarting
  # from M_0 would throw the previous iterations' steps away (docs/arithmetic.md).
  c.star.restart_from_base = False
  c.star.steps_schedule = "linear"
  c.star.base_steps = 12
  c.star.steps_increment = 0
  c.star.max_new_tokens = 168  # a 5-digit completion is 160 SmolLM2 tokens
  # Bare training texts are <= 187 tokens (5 digits), packed into 192-token rows. The
  # memory policy of configs/cqa.py (micro-batches) at a size these short rows allow.
  c.train.seq_len = 192
  c.train.batch_size, c.train.grad_accum = 4, 2  # 8 rows a step, as in the paper
  # The paper's 1e-6 moves GPT-J over hundreds of steps; 12 steps of a 135M model need more.
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 3
  c.sample.batch_size = 32
  if variant == "smoke":  # a random tiny model, one token per character: a fast loop test
    c.model.checkpoint = ""
    c.model.preset = "tiny"
    c.model.overrides = model_overrides(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                        head_dim=16, ffn_dim=128, max_seq_len=256)
    c.task_options.shots = 1
    c.tokenizer.kind = "char"
    c.tokenizer.pieces = [" " + d for d in "0123456789"] + [
        "Input:\n", "Target:\n", "Hint:", "<scratch>\n", "</scratch>\n", " + ", " , ", " C: "]
    c.data.max_train, c.data.max_eval = 32, 20
    c.task_options.max_digits = c.task_options.eval_max_digits = 2
    c.star.iterations = 2
    c.star.questions_per_iteration = 0
    c.star.max_new_tokens = 48
    c.star.base_steps = 4
    # A warm start on 1-2 digit gold scratchpads shown with their exemplar (the data seed's
    # train partition), so the tiny model keeps some rationales and the fine-tuning runs.
    c.pretrain.steps = 120
    c.pretrain.data = {"max_train": 400}
    c.train.seq_len = 256
    c.train.batch_size, c.train.grad_accum = 8, 1
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 10
    c.sample.batch_size = 32
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  return c
