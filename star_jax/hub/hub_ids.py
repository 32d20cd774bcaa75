"""Models by Hugging Face hub id: ``org/name`` or ``org/name@revision``.

Wherever a checkpoint is named (``model.checkpoint``, ``generate``, ``export``, the pre-flight
and the plan), a hub id resolves through ``huggingface_hub`` to a snapshot directory in its
cache, then loads as any Hugging Face directory does. Only the files the loader reads are
fetched (``FILES``: the config, the safetensors shards and their index, the tokenizer). The
hub's own environment applies, read when a name is resolved: ``HF_HOME`` / ``HF_HUB_CACHE``
(the cache), ``HF_HUB_OFFLINE=1`` (the cache only), ``HF_TOKEN`` (gated models: Llama,
Gemma). A local path of the same name wins over the hub, and says so. On a multi-process run
process 0 downloads first and the others then read the cache (a shared cache is read, a
per-host one filled by each host).

Every failure is one line that names the id and what to do: not in the cache while offline,
no such repository or revision, a gated model without a token, a cached snapshot missing
files its index lists.
"""

from __future__ import annotations

import json
import logging
import os
import re

from star_jax.hub.place import CheckpointError
from star_jax.runtime import distributed

# org/name, optionally @revision (a branch, a tag or a commit hash)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
         "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
         "generation_config.json"]


def is_hub_id(name: str) -> bool:
  return bool(HUB_ID.match(name or ""))


def split(name: str) -> tuple[str, str | None]:
  """(repo id, revision or None)."""
  repo, _, revision = name.partition("@")
  return repo, revision or None


def cache_dir() -> str:
  """The hub cache as ``huggingface_hub`` places it, read now (not at its import)."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "huggingface")
  return os.path.join(home, "hub")


def offline() -> bool:
  return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def snapshot(name: str) -> str:
  """The local snapshot directory of hub id ``name``, fetched if needed."""
  import jax
  if jax.process_count() > 1:  # process 0 first; the others read what it fetched
    path = _fetch(name, local_only=offline()) if distributed.is_primary() else None
    distributed.barrier(f"hub download of {name}")
    if path is None:
      try:
        path = _fetch(name, local_only=True)
      except CheckpointError:  # a per-host cache: this host fetches its own copy
        path = _fetch(name, local_only=offline())
    return path
  return _fetch(name, local_only=offline())


def _fetch(name: str, local_only: bool) -> str:
  from huggingface_hub import errors, snapshot_download
  repo, revision = split(name)
  where = cache_dir()
  try:
    path = snapshot_download(repo, revision=revision, cache_dir=where, allow_patterns=FILES,
                             local_files_only=local_only)
  except errors.GatedRepoError:
    raise CheckpointError(f"checkpoint {name!r} is gated on the Hugging Face hub: accept its "
                          "license on its page and set HF_TOKEN") from None
  except errors.RevisionNotFoundError:
    raise CheckpointError(f"checkpoint {name!r}: the hub has no revision {revision!r}") from None
  except errors.RepositoryNotFoundError:
    raise CheckpointError(f"checkpoint {name!r}: no such repository on the Hugging Face hub "
                          "(or it is private: set HF_TOKEN)") from None
  except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
    how = ("HF_HUB_OFFLINE=1 is set: download it once with the network on, or point "
           "model.checkpoint at a local directory" if local_only else
           f"the hub could not be reached ({type(e).__name__})")
    raise CheckpointError(f"checkpoint {name!r} is not in the Hugging Face cache {where} and "
                          f"{how}") from None
  check_complete(name, path)
  logging.info("checkpoint %s: %s", name, path)
  return path


def check_complete(name: str, path: str) -> None:
  """One line naming what a cached snapshot lacks (a download cut short, a partial copy)."""
  missing = [f for f in ("config.json",) if not os.path.exists(os.path.join(path, f))]
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f).get("weight_map", {}).values()))
    missing += [s for s in shards if not os.path.exists(os.path.join(path, s))]
  elif not any(f.endswith(".safetensors") for f in os.listdir(path)):
    missing.append("*.safetensors")
  if missing:
    raise CheckpointError(f"checkpoint {name!r}: the cached snapshot {path} lacks "
                          f"{', '.join(missing)}; fetch it again online (or delete the "
                          "snapshot and rerun)")
