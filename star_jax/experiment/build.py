"""Turning a config into the pieces of a run: task, data, tokenizer, mesh, model, sampler.

A run's tokenizer is saved in its workdir the first time and reloaded after, so
a resumed or re-evaluated run tokenizes exactly as the original did. ``check`` asks
what can be asked before anything is built or written (the data files and the
checkpoint exist), so a wrong path fails at once and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import logging

from etils import epath
from flax import nnx
from jax.sharding import Mesh

from star_jax.config import Config, TokenizerConfig, seed_data
from star_jax.data import source_paths
from star_jax.engine import lora, model_config, params as params_lib, sharding
from star_jax.engine.precision import as_masters, cast_leaves, dtype_names
from star_jax.hub.checkpointer import load_params
from star_jax.runtime.distributed import barrier, is_primary
from star_jax.runtime.errors import CheckpointError, ConfigError, MissingFileError
from star_jax.experiment.models import (build_model_config, is_bare_orbax, load_model,
                                        make_task)
from star_jax.sampling import Sampler
from star_jax.tasks import Example, Task, task_class
from star_jax.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer


@dataclasses.dataclass
class Experiment:
  task: Task
  train_set: list[Example]
  eval_set: list[Example]
  tokenizer: Tokenizer
  mesh: Mesh
  model_cfg: model_config.ModelConfig
  graphdef: nnx.GraphDef
  params: nnx.State  # the base model as built or loaded (before any warm start)
  master_dtype: str = "float32"  # what training holds the weights in (train.master_dtype)
  rounding: str = "stochastic"  # how masters become the model's dtype (train.rounding)
  rounding_seed: int = 0  # its fixed key: the same masters always give the same copy

  # Which weights a run holds: a model a later fine-tune starts from (a pretrained M_0; M_n
  # without star.restart_from_base) keeps the trainer's master weights, or updates below the
  # compute dtype's spacing would be rounded away between fine-tunes; a model that is only
  # sampled from is held as the sampler's copy, in the model's dtype.
  def sampling_copy(self, params):
    """``params`` in the model's own dtypes: what the sampler computes with."""
    return cast_leaves(params, dtype_names(self.params), self.rounding, self.rounding_seed)

  def restore_target(self, masters: bool):
    """Restore target of a saved model: the base model's layout, in the master dtype when
    ``masters``. With LoRA the model itself (its base never trains; a checkpoint of the base
    alone is restored with the model's fresh adapters)."""
    if lora.has_adapters(self.params):
      return self.params
    abstract = params_lib.abstract_like(self.params)
    return as_masters(abstract, self.master_dtype) if masters else abstract


def build_tokenizer(tc: TokenizerConfig, task: Task, texts: list[str],
                    workdir: epath.PathLike) -> Tokenizer:
  """The configured tokenizer: a file, or one built from the task's texts (then saved)."""
  if tc.path:
    return load_tokenizer(tc.path)
  kind = tc.kind
  suffix = {"char": "json", "sentencepiece": "model"}.get(kind)
  if suffix is None:
    raise ValueError(f"tokenizer.kind must be 'char' or 'sentencepiece' (or set tokenizer.path), "
                     f"got {kind!r}")
  saved = epath.Path(workdir) / f"tokenizer.{suffix}"
  if not saved.exists() and is_primary():  # one process builds; the others load it
    if kind == "char":
      tok = CharTokenizer.from_texts(texts, pieces=list(tc.pieces))
    else:
      tok = SentencePieceTokenizer.train(texts, vocab_size=tc.vocab_size)
    tok.save(saved)
    logging.info("built a %s tokenizer with %d ids from %d texts -> %s", kind, tok.vocab_size,
                 len(texts), saved)
  barrier("tokenizer built")
  return load_tokenizer(saved)


def tokenizer_texts(task: Task, examples: list[Example]) -> list[str]:
  """Everything the model will read or write: prompts with and without hints, gold text."""
  texts = []
  for ex in list(task.exemplars()) + list(examples):
    texts.append(task.prompt(ex, hint=True))
    texts.append(task.prompt(ex, hint=False, few_shot=False))
    gold = task.gold_rationale(ex)
    texts.append(task.completion(gold if gold is not None else "", ex))
  return texts


def check(config: Config) -> None:
  """What can fail on a path the config names, asked before anything is built or written:
  the official data files (text tasks) and the model checkpoint exist."""
  source = task_class(config.task).data_source
  if source is not None:
    source_paths(source, config.data)
  ckpt = config.model.checkpoint
  if ckpt and not is_bare_orbax(ckpt):
    from star_jax.hub import resolve  # imports tokenizers/gguf only when needed
    resolve(ckpt)
  elif ckpt and not epath.Path(ckpt).exists():
    raise MissingFileError(f"model.checkpoint {ckpt!r} does not exist")
  if config.tokenizer.path and not epath.Path(config.tokenizer.path).exists():
    raise MissingFileError(f"tokenizer.path {config.tokenizer.path!r} does not exist")


def seed_set(config: Config, task: Task) -> tuple[Task, list[Example]]:
  """The seed set P: the train problems ``pretrain.data`` and ``pretrain.task_options``
  choose, and the task with those options."""
  opts = config.pretrain.task_options
  seed_task = task.with_options(**opts) if opts else task
  return seed_task, seed_task.load("train", seed_data(config))


def hinted_seed_set(config: Config, task: Task) -> tuple[Task, list[Example]]:
  """P's part shown only with the hint: the train problems ``pretrain.hinted_task_options``
  choose (on top of ``pretrain.task_options``), less P's own questions; none when unset."""
  extra = config.pretrain.hinted_task_options
  if not extra:
    return task, []
  hinted_task = task.with_options(**{**config.pretrain.task_options, **extra})
  seen = {ex.question for ex in seed_set(config, task)[1]}
  return hinted_task, [ex for ex in hinted_task.load("train", seed_data(config))
                       if ex.question not in seen]


def without_seed_set(config: Config, task: Task, train_set: list[Example]) -> list[Example]:
  """D without the seed set P's questions, its hinted part's too (``pretrain.disjoint``)."""
  seen = {ex.question for ex in seed_set(config, task)[1] + hinted_seed_set(config, task)[1]}
  kept = [ex for ex in train_set if ex.question not in seen]
  logging.info("D leaves out the seed set's questions: %d of %d train questions remain",
               len(kept), len(train_set))
  return kept


def build(config: Config, workdir: epath.PathLike) -> Experiment:
  task = make_task(config)
  train_set = task.load("train", config.data)
  eval_set = task.load("eval", config.data)
  if config.pretrain.disjoint and config.pretrain.steps > 0:
    train_set = without_seed_set(config, task, train_set)
  if not train_set:
    raise ConfigError(f"task {config.task!r} has an empty train set (data: {config.data})")
  if not eval_set:
    raise ConfigError(f"task {config.task!r} has an empty eval set (data: {config.data})")
  mesh = sharding.make_mesh(dataclasses.asdict(config.mesh))
  ckpt = config.model.checkpoint
  if ckpt and not is_bare_orbax(ckpt):
    # A pre-trained model (HF directory, GGUF file, a known name, or an earlier run's
    # workdir / checkpoints / iteration) brings its own architecture and tokenizer.
    # A checkpoint fixes the architecture; the overrides may still say how it runs.
    pre = load_model(ckpt, mesh, dtype=config.model.dtype or None,
                     **model_config.execution_of(config.model.overrides))
    tokenizer = load_tokenizer(config.tokenizer.path) if config.tokenizer.path else pre.tokenizer
    if tokenizer is None:
      raise CheckpointError(f"checkpoint {ckpt!r} has no tokenizer.json: set tokenizer.path")
    cfg, graphdef, params = pre.model_cfg, pre.graphdef, pre.params
  else:
    tokenizer = build_tokenizer(config.tokenizer, task, tokenizer_texts(task, train_set), workdir)
    cfg = build_model_config(config, task, tokenizer)
    graphdef, params = params_lib.init_params(cfg, mesh, seed=config.seed)
    if ckpt:
      params = load_params(ckpt, params)
  if config.model.lora_rank:
    # Adapters go on whatever base the run has (random, loaded, pre-trained), never
    # changing its weights: the same seed gives the same base with or without LoRA.
    cfg = cfg.replace(lora_rank=config.model.lora_rank, lora_alpha=config.model.lora_alpha,
                      lora_targets=model_config.lora_targets(config.model.lora_targets))
    graphdef, params = lora.add_adapters(cfg, mesh, params, seed=config.seed)
  logging.info("model %s: %.2fM params on mesh %s%s", ckpt or config.model.preset,
               params_lib.count(params) / 1e6, sharding.describe(mesh),
               f"; LoRA rank {cfg.lora_rank} on {','.join(cfg.lora_targets)}: "
               f"{params_lib.count(lora.split(params)[0]) / 1e6:.3f}M trained"
               if cfg.lora_rank else "")
  return Experiment(task, train_set, eval_set, tokenizer, mesh, cfg, graphdef, params,
                    config.train.master_dtype, config.train.rounding, config.seed)


def make_sampler(exp: Experiment, config: Config) -> Sampler:
  """The run's sampler: its batch, layout and the task's stop strings as token spellings."""
  return Sampler(exp.model_cfg, exp.graphdef, exp.mesh, end_ids=exp.tokenizer.end_ids,
                 pad_id=exp.tokenizer.pad_id, batch_size=config.sample.batch_size,
                 layout=config.sample.layout,
                 stop_sequences=stop_sequences(exp.tokenizer, exp.task.stop_strings))


def stop_sequences(tokenizer: Tokenizer, stop_strings) -> list[list[int]]:
  """Token spellings of the stop strings, for the sampler to stop rows on the device.

  Only encodings that decode back to the string are used; the host-side stop
  check still covers any other way a tokenizer may spell a stop string.
  """
  out = []
  for s in stop_strings:
    ids = tokenizer.encode(s)
    if ids and tokenizer.decode(ids) == s:
      out.append(ids)
  return out
