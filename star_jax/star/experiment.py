"""Turning a config into the pieces of a run: task, data, tokenizer, mesh and model.

A run's tokenizer is saved in its workdir the first time and reloaded after, so
a resumed or re-evaluated run tokenizes exactly as the original did.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import ml_collections
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from star_jax.engine import lora, model_config, params as params_lib, sharding
from star_jax.engine.checkpointer import Checkpointer
from star_jax.runtime.distributed import barrier, is_primary
from star_jax.tasks import Example, Task, get_task
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
  params: nnx.State  # the base model M_0


def build_tokenizer(config: ml_collections.ConfigDict, task: Task, texts: list[str],
                    workdir: epath.PathLike) -> Tokenizer:
  """The configured tokenizer: a file, or one built from the task's texts (then saved)."""
  tc = config.tokenizer
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
      tok = CharTokenizer.from_texts(texts, pieces=list(tc.get("pieces", ()) or ()))
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


def build_model_config(config: ml_collections.ConfigDict, task: Task, tokenizer: Tokenizer
                       ) -> model_config.ModelConfig:
  overrides = dict(config.model.get("overrides", {}) or {})
  cfg = model_config.get_preset(config.model.preset, **overrides)
  scheme = task.positions(tokenizer)
  if scheme is not None:
    cfg = cfg.replace(positions=scheme)
  if cfg.vocab_size < tokenizer.vocab_size:
    if config.model.checkpoint:
      raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary "
                       f"is {cfg.vocab_size}: they do not belong together")
    cfg = cfg.replace(vocab_size=_round_up(tokenizer.vocab_size, 128))
  return cfg


def _round_up(n: int, k: int) -> int:
  return -(-n // k) * k


def build(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> Experiment:
  task = get_task(config.task, max_new_tokens=config.star.max_new_tokens or None,
                  **dict(config.task_options))
  train_set = task.load("train", config.data)
  eval_set = task.load("eval", config.data)
  if not train_set:
    raise ValueError(f"task {config.task!r} has an empty train set (data: {config.data})")
  if not eval_set:
    raise ValueError(f"task {config.task!r} has an empty eval set (data: {config.data})")
  mesh = sharding.make_mesh(dict(config.mesh))
  ckpt = config.model.checkpoint
  if ckpt and not is_star_jax_checkpoint(ckpt):
    # A pre-trained model (HF directory, GGUF file or a known name) brings its own tokenizer.
    from star_jax.hub import load_pretrained  # imports tokenizers/gguf only when needed

    # A checkpoint fixes the architecture; the overrides may still say how it runs.
    pre = load_pretrained(ckpt, mesh, dtype=config.model.dtype or None,
                          **model_config.execution_of(config.model.get("overrides")))
    tokenizer = load_tokenizer(config.tokenizer.path) if config.tokenizer.path else pre.tokenizer
    if tokenizer is None:
      raise ValueError(f"checkpoint {ckpt!r} has no tokenizer.json: set tokenizer.path")
    cfg, graphdef, params = pre.model_cfg, pre.graphdef, pre.params
  else:
    tokenizer = build_tokenizer(config, task, tokenizer_texts(task, train_set), workdir)
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
  return Experiment(task, train_set, eval_set, tokenizer, mesh, cfg, graphdef, params)


def is_star_jax_checkpoint(path: epath.PathLike) -> bool:
  """An orbax directory written by star_jax (numbered step folders), e.g. WORKDIR/checkpoints."""
  path = epath.Path(path)
  return path.is_dir() and any(d.name.isdigit() for d in path.iterdir())


def load_params(path: epath.PathLike, target: Any) -> Any:
  """Params from a star_jax (orbax) checkpoint directory, onto ``target``'s layout."""
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"model.checkpoint {str(path)!r} does not exist")
  ckpt = Checkpointer(path, max_to_keep=None)
  try:
    return ckpt.restore_model(target)
  except FileNotFoundError:
    raise
  except Exception as e:  # orbax reports structure/shape mismatches in many forms
    raise ValueError(f"checkpoint {str(path)!r} does not match model config "
                     f"{jax.tree.structure(target)}: {e}") from e
  finally:
    ckpt.close()
