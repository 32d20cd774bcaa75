"""Typed configs at the boundary: every key declared once, every typo a clear error."""

import dataclasses
import glob
import os

import pytest

from helpers.runs import ROOT, load_config
from star_jax import config as config_lib
from star_jax.config import reference
from star_jax.data import DataConfig
from star_jax.runtime.errors import ConfigError
from star_jax.tasks import ArithmeticTask


def test_docs_config_md_is_generated_from_the_declarations():
  """Run `python -m star_jax.config.reference > docs/config.md` when this fails."""
  with open(os.path.join(ROOT, "docs", "config.md")) as f:
    assert f.read() == reference.render()


def _declared(cls):
  for f in dataclasses.fields(cls):
    if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
        f.default_factory):
      yield from _declared(f.default_factory)
    else:
      yield f


@pytest.mark.parametrize("cls", [config_lib.Config, DataConfig, ArithmeticTask.Options])
def test_every_key_has_a_comment(cls):
  assert all(f.metadata.get("doc") for f in _declared(cls))


def test_the_defaults_load_to_the_declared_defaults():
  cfg = config_lib.load(config_lib.base_config())
  assert cfg.model.overrides == config_lib.model_overrides()  # how a model runs: settable
  bare = dataclasses.replace(cfg, task_options={},
                             model=dataclasses.replace(cfg.model, overrides={}))
  assert bare == config_lib.Config()
  assert cfg.task_options == ArithmeticTask.Options()
  assert isinstance(cfg.data, DataConfig)


def _variants(path):
  """"" and every variant a configs/*.py file names (``variant == "smoke"``), the shared
  ones of ``text_task_config`` (smoke, paper) too."""
  import re
  text = open(path).read()
  if "text_task_config" in text:
    text += open(os.path.join(ROOT, "star_jax", "config", "defaults.py")).read()
  return [""] + sorted(set(re.findall(r'variant [!=]= "(\w+)"', text)))


@pytest.mark.parametrize("spec", sorted(
    f"{os.path.basename(p)[:-3]}:{v}" for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
    for v in _variants(p)))
def test_every_shipped_config_loads_and_passes_the_checks_a_run_starts_with(spec):
  from star_jax.star import verifier
  from star_jax.star.methods import get_method
  name, variant = spec.split(":")
  cfg = config_lib.load(load_config(name, variant))
  assert cfg.task in ("arithmetic", "cqa", "gsm8k")
  method = get_method(cfg.star.method)
  method.check(cfg)  # what star.run refuses before anything runs
  verifier.check(cfg, method)


@pytest.mark.parametrize("key,value,named,nearest", [
    ("star.iteratons", 3, "star.iteratons", "iterations"),
    ("trian", {}, "trian", "train"),
    ("pretrain.data.max_trian", 5, "pretrain.data.max_trian", "max_train"),
    ("pretrain.task_options.digit_count", (1, 2), "pretrain.task_options.digit_count",
     "digit_counts"),
    ("task_options.max_digit", 3, "task_options.max_digit", "max_digits"),
    ("model.overrides.num_layer", 2, "model.overrides.num_layer", "num_layers"),
])
def test_a_typo_anywhere_names_the_key_and_the_nearest(key, value, named, nearest):
  d = config_lib.base_config().to_dict()
  node, *path = d, *key.split(".")
  for part in path[:-1]:
    node = node[part]
  node[path[-1]] = value
  with pytest.raises(ConfigError) as e:
    config_lib.load(d)
  assert named in str(e.value) and repr(nearest) in str(e.value)


def test_values_are_checked_against_their_choices_and_types():
  d = config_lib.base_config().to_dict()
  d["star"]["steps_schedule"] = "linaer"
  with pytest.raises(ConfigError,
                     match=r"star.steps_schedule must be one of .*\(did you mean 'linear'\?\)"):
    config_lib.load(d)
  d = config_lib.base_config().to_dict()
  d["train"]["batch_size"] = 2.5
  with pytest.raises(ConfigError, match="train.batch_size must be a whole number"):
    config_lib.load(d)
  d = config_lib.base_config().to_dict()
  d["task_options"]["positions"] = "columns"
  with pytest.raises(ConfigError, match="task_options.positions must be one of"):
    config_lib.load(d)


def test_the_seed_set_reads_the_run_data_with_its_own_changes():
  cfg = config_lib.load(load_config("arithmetic", "smoke"))
  seed = config_lib.seed_data(cfg)
  assert (seed.max_train, seed.seed) == (400, 1) and seed.max_eval == cfg.data.max_eval
  assert cfg.pretrain.task_options == {"min_digits": 1, "max_digits": 1}


@pytest.mark.parametrize("tops", [(3, 2), (0, 1), (2.5,)])
def test_a_curriculum_that_decreases_or_is_not_whole_is_refused(tops):
  d = config_lib.base_config().to_dict()
  d["star"]["curriculum"] = tops
  with pytest.raises(ConfigError, match="star.curriculum must be whole numbers >= 1"):
    config_lib.load(d)
  d["star"]["curriculum"] = (2, 2, 5)
  assert config_lib.load(d).star.curriculum_top(4) == 5


def test_the_warm_start_trains_with_the_run_train_keys_and_its_own_changes():
  d = config_lib.base_config().to_dict()
  d["pretrain"]["train"] = {"seq_len": 128, "fit_rows": 0}
  d["pretrain"]["learning_rate"] = 5e-3
  d["train"]["fit_rows"] = 4096
  cfg = config_lib.load(d)
  seed = config_lib.seed_train(cfg)
  assert (seed.seq_len, seed.fit_rows, seed.learning_rate) == (128, 0, 5e-3)
  assert seed.batch_size == cfg.train.batch_size and cfg.train.seq_len != 128
  d["pretrain"]["train"] = {"seq_lne": 128}
  with pytest.raises(ConfigError, match=r"pretrain.train.seq_lne.*'seq_len'"):
    config_lib.load(d)
  d["pretrain"]["train"] = {"batch_size": 2.5}
  with pytest.raises(ConfigError, match="pretrain.train.batch_size must be a whole number"):
    config_lib.load(d)


def test_a_task_gets_options_of_another_task_refused():
  c = config_lib.base_config("arithmetic")
  c.task = "gsm8k"
  with pytest.raises(ConfigError, match="not an option of task 'gsm8k'"):
    config_lib.load(c)


def test_every_key_the_docs_use_on_a_command_line_is_declared():
  """README and docs/ name keys a user copies: each one is a key a run takes."""
  import re
  from star_jax.engine.model_config import ModelConfig
  from star_jax.tasks import available_tasks, task_class
  known = set(config_lib.flatten(config_lib.to_dict(config_lib.Config())))
  known |= {f"model.overrides.{f.name}" for f in dataclasses.fields(ModelConfig)}
  known |= {f"{group}.{f.name}" for t in available_tasks()
            for f in dataclasses.fields(task_class(t).Options)
            for group in ("task_options", "pretrain.task_options")}
  known |= {f"pretrain.data.{f.name}" for f in dataclasses.fields(DataConfig)}
  known |= {f"pretrain.train.{f.name}" for f in dataclasses.fields(config_lib.TrainConfig)}
  pages = [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "*.md"))
  used = {(os.path.basename(p), k) for p in pages
          for k in re.findall(r"--config\.([a-z_][a-z0-9_.]*[a-z0-9_])=", open(p).read())}
  assert sorted((page, k) for page, k in used if k not in known) == []
