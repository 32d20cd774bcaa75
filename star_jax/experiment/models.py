"""What a config or a checkpoint name says the model is: one resolver for the whole library.

``model.checkpoint``, ``generate --checkpoint``, ``export --checkpoint``, the pre-flight and
the plan all accept

- a known name (``smollm2-135m-instruct``), a Hugging Face directory or a GGUF file
  (``hub.load_pretrained``);
- a star_jax run: its workdir, its ``WORKDIR/checkpoints``, or one iteration of it
  (``WORKDIR/checkpoints/N``) — the latest iteration unless N is named. The run's recorded
  ``config.json`` says what the model is (preset and overrides, or the pre-trained checkpoint
  it started from), its tokenizer file or its checkpoint's tokenizer says how it reads;
  a LoRA iteration is joined with the base it was trained on and folded into it.

Every model comes back as ``hub.Pretrained`` without adapters: what it computes, ready to
sample, fine-tune further (a new run adds its own adapters) or export.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import jax
from etils import epath
from jax.sharding import Mesh

from star_jax import config as config_lib
from star_jax.engine import lora, model_config, params as params_lib
from star_jax.hub.checkpointer import Checkpointer, is_star_jax_checkpoint
from star_jax.runtime.errors import CheckpointError, MissingFileError
from star_jax.tasks import Task, task_class
from star_jax.tokenizer import Tokenizer, load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # what experiment.build saves


class RunCheckpoint(NamedTuple):
  workdir: epath.Path
  step: int | None  # None: the latest


def build_model_config(config: config_lib.Config, task: Task, tokenizer: Tokenizer
                       ) -> model_config.ModelConfig:
  """A config's preset with its overrides, the task's position scheme and a vocabulary that
  holds the tokenizer's ids."""
  cfg = model_config.get_preset(config.model.preset, **config.model.overrides)
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


def is_bare_orbax(checkpoint: str) -> bool:
  """An orbax directory of numbered steps outside a run's workdir (``pretrain_ckpt``, a copied
  ``checkpoints``): it holds weights only, so the config's own preset says what they are.
  Everything else a checkpoint may be named by is resolved by ``experiment.models``."""
  return is_star_jax_checkpoint(checkpoint) and not is_run_checkpoint(checkpoint)


def make_task(config: config_lib.Config) -> Task:
  """The configured task with its (validated) options."""
  return task_class(config.task)(config.task_options, config.star.max_new_tokens or None)


def find_run(name_or_path: str) -> RunCheckpoint | None:
  """The run a path names (workdir, ``checkpoints`` or ``checkpoints/N``), or None."""
  if not name_or_path:
    return None
  path = epath.Path(name_or_path)
  if (path.name.isdigit() and path.parent.name == "checkpoints"
      and (path.parent.parent / "config.json").exists()):
    return RunCheckpoint(path.parent.parent, int(path.name))  # an iteration, saved or not
  if not path.exists():
    return None
  if path.is_dir() and (path / "config.json").exists() and (path / "checkpoints").is_dir():
    return RunCheckpoint(path, None)
  if path.name == "checkpoints" and (path.parent / "config.json").exists():
    return RunCheckpoint(path.parent, None)
  return None


def is_run_checkpoint(name_or_path: str) -> bool:
  return find_run(name_or_path) is not None


def run_config(workdir: epath.PathLike) -> config_lib.Config:
  """The config a run recorded in its workdir."""
  path = epath.Path(workdir) / "config.json"
  try:
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return config_lib.load(recorded)
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{path}: not a star_jax run's config ({e})") from None


def run_tokenizer(config: config_lib.Config, workdir: epath.PathLike) -> Tokenizer:
  """The tokenizer a run read and wrote with: its tokenizer.path, the file it built in its
  workdir, or the tokenizer of the pre-trained checkpoint it started from."""
  if config.tokenizer.path:
    return load_tokenizer(config.tokenizer.path)
  for name in TOKENIZER_FILES:
    if (epath.Path(workdir) / name).exists():
      return load_tokenizer(epath.Path(workdir) / name)
  if config.model.checkpoint:
    tok = tokenizer_of(config.model.checkpoint)
    if tok is not None:
      return tok
  raise MissingFileError(f"{workdir}: no tokenizer file ({', '.join(TOKENIZER_FILES)}) and no "
                         f"pre-trained checkpoint to take one from")


def tokenizer_of(name_or_path: str) -> Tokenizer | None:
  """The tokenizer of anything a checkpoint may be named by (None: it has none)."""
  run = find_run(name_or_path)
  if run is not None:
    return run_tokenizer(run_config(run.workdir), run.workdir)
  from star_jax.hub import tokenizer_of as of_pretrained  # tokenizers/gguf: when needed
  return of_pretrained(name_or_path)


def run_model_config(config: config_lib.Config, workdir: epath.PathLike,
                     tokenizer: Tokenizer | None = None, dtype: str | None = None
                     ) -> model_config.ModelConfig:
  """The architecture of a run's models (without adapters), from its recorded config."""
  ckpt = config.model.checkpoint
  if ckpt and not is_bare_orbax(ckpt):  # a bare orbax directory: the config's preset, as built
    cfg = model_config_of(ckpt, dtype=config.model.dtype or None)
    cfg = cfg.replace(**model_config.execution_of(config.model.overrides))
    task = make_task(config)
    tokenizer = tokenizer or run_tokenizer(config, workdir)
    scheme = task.positions(tokenizer)
    if scheme is not None:
      cfg = cfg.replace(positions=scheme)
  else:
    tokenizer = tokenizer or run_tokenizer(config, workdir)
    cfg = build_model_config(config, make_task(config), tokenizer)
  return cfg.replace(param_dtype=dtype, dtype=dtype) if dtype else cfg


def model_config_of(name_or_path: str, dtype: str | None = None) -> model_config.ModelConfig:
  """The architecture of anything a checkpoint may be named by, without reading weights."""
  run = find_run(name_or_path)
  if run is None:
    from star_jax.hub import model_config_of as of_pretrained  # tokenizers/gguf: when needed
    return of_pretrained(name_or_path, dtype)
  return run_model_config(run_config(run.workdir), run.workdir, dtype=dtype)


def load_model(name_or_path: str, mesh: Mesh, dtype: str | None = None, **execution: Any):
  """``hub.Pretrained`` (config, graphdef, params on ``mesh``, tokenizer) of any checkpoint
  name; a run's iteration with its adapters folded in. ``execution`` as in
  ``hub.load_pretrained`` (remat, scan_layers, ...)."""
  from star_jax.hub import Pretrained, load_pretrained  # tokenizers/gguf: when needed
  run = find_run(name_or_path)
  if run is None:
    return load_pretrained(name_or_path, mesh, dtype=dtype, **execution)
  config = run_config(run.workdir)
  tokenizer = run_tokenizer(config, run.workdir)
  cfg = run_model_config(config, run.workdir, tokenizer).replace(**execution)
  ckpt = Checkpointer(run.workdir / "checkpoints", max_to_keep=None)
  try:
    steps = ckpt.all_steps()
    step = max(steps, default=None) if run.step is None else run.step
    if step is None or step not in steps:
      raise CheckpointError(f"{run.workdir / 'checkpoints'}: no iteration "
                            f"{'saved yet' if step is None else step} (saved: {steps})")
    meta = ckpt.meta(step)
    lora_run = bool(meta.get("adapters_on") is not None or meta.get("lora_base"))
    if lora_run:
      cfg = cfg.replace(lora_rank=config.model.lora_rank, lora_alpha=config.model.lora_alpha,
                        lora_targets=model_config.lora_targets(config.model.lora_targets))
    graphdef, abstract = params_lib.abstract_model(cfg)
    shardings = params_lib.param_shardings(abstract, mesh)
    target = params_lib.abstract_like(abstract, shardings)
    if lora_run:  # the base restores onto the abstract tree; adapters need arrays to join
      adapters = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype, device=s.sharding),
                              lora.split(target)[0])
      target = lora.join(adapters, lora.split(target)[1])
    try:
      params = ckpt.restore_model(target, step=step)
    except Exception as e:  # orbax reports mismatches in many forms
      raise CheckpointError(f"{run.workdir / 'checkpoints' / str(step)} does not match the "
                            f"model its run's config.json describes: {e}") from e
  finally:
    ckpt.close()
  params = _cast(params, cfg)  # masters (float32) saved for training: back to the model dtype
  if lora_run:
    params = lora.fold(graphdef, params)
    cfg = cfg.replace(lora_rank=0)
    graphdef = params_lib.abstract_model(cfg)[0]
  if dtype:  # as for any checkpoint: the dtype asked for, parameters and compute
    cfg = cfg.replace(param_dtype=dtype, dtype=dtype)
    graphdef = params_lib.abstract_model(cfg)[0]
    params = _cast(params, cfg)
  return Pretrained(cfg, graphdef, params, tokenizer)


def _cast(params, cfg: model_config.ModelConfig):
  """Every leaf in the dtype the model keeps it in (adapters stay float32, as built)."""
  _, abstract = params_lib.abstract_model(cfg)
  return jax.tree.map(lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype), params,
                      abstract)
