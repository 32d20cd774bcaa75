"""Dataset sources for the STaR tasks: official jsonl files -> TFDS (ArrayRecord) -> records."""

from star_jax.data.builders import (BUILDERS, CommonsenseQABuilder, Gsm8kBuilder, load_records,
                                    make_builder, source_paths)
from star_jax.data.data_config import DataConfig
from star_jax.data.sources import SOURCES, DataFormatError, SourceSpec, ensure_files, read_jsonl

__all__ = [
    "BUILDERS", "DataConfig", "CommonsenseQABuilder", "Gsm8kBuilder", "load_records", "make_builder",
    "source_paths", "SOURCES", "DataFormatError", "SourceSpec", "ensure_files", "read_jsonl",
]
