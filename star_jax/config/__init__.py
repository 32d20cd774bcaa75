"""Typed run configs: every key declared once (``schema``), the ConfigDict the
``configs/*.py`` files start from (``defaults``), and the validating boundary (``load``)."""

from star_jax.config.defaults import base_config, model_overrides, task_options, text_task_config
from star_jax.config.load import flatten, load, seed_data, seed_train, to_dict
from star_jax.config.schema import (FREE_FORM, OPERATIONAL_KEYS, Config, EvalConfig, MeshConfig,
                                    ModelSpec, PretrainConfig, RLConfig, SampleConfig,
                                    SearchConfig, StarConfig, TokenizerConfig, TrainConfig,
                                    VerifierConfig)

__all__ = [
    "FREE_FORM", "OPERATIONAL_KEYS", "Config", "EvalConfig", "MeshConfig", "ModelSpec",
    "PretrainConfig", "RLConfig", "SampleConfig", "SearchConfig", "StarConfig",
    "TokenizerConfig", "TrainConfig", "VerifierConfig", "base_config", "flatten", "load",
    "model_overrides", "seed_data", "seed_train", "task_options", "text_task_config", "to_dict",
]
