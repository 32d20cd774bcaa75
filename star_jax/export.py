r"""Export a model as a Hugging Face checkpoint (config.json, model.safetensors, tokenizer).

  python -m star_jax.export --checkpoint=runs/cqa/checkpoints --out=exported/cqa_m10
  python -m star_jax.export --checkpoint=smollm2-135m-instruct --out=/tmp/smollm2 \
      --dtype=bfloat16

``--checkpoint`` is anything ``model.checkpoint`` accepts: a known name, a Hugging Face hub
id (``org/name[@revision]``) or directory, a GGUF file, or a star_jax run (its workdir,
``WORKDIR/checkpoints`` for the latest iteration, ``WORKDIR/checkpoints/N`` for M_N; LoRA
adapters are folded in). The directory it writes loads in transformers
(``AutoModelForCausalLM.from_pretrained(out)``), vLLM, lm-evaluation-harness (``--model hf
--model_args pretrained=out``) and llama.cpp's ``convert_hf_to_gguf.py``.
"""

from __future__ import annotations

from absl import flags

from star_jax.runtime import cli


def export(checkpoint: str, out: str, dtype: str | None = None,
           max_shard_gib: float = 4.0) -> list[str]:
  """Loads ``checkpoint`` and writes it to ``out``; returns the files written."""
  from star_jax.engine import sharding
  from star_jax.experiment.models import load_model
  from star_jax.hub import hf_export as export_lib

  mesh = sharding.make_mesh((1, 1, -1))
  pre = load_model(checkpoint, mesh)
  return export_lib.export(pre.model_cfg, pre.params, pre.tokenizer, out, dtype=dtype,
                           max_shard_bytes=int(max_shard_gib * 2**30))


def define_flags():
  flags.DEFINE_string("checkpoint", None, "What to export: a known name, a Hugging Face "
                      "hub id (org/name[@revision]) or directory, a .gguf file, or a "
                      "star_jax run (WORKDIR, WORKDIR/checkpoints, "
                      "WORKDIR/checkpoints/N).", required=True)
  flags.DEFINE_string("out", None, "Directory to write (must not exist, or be empty).",
                      required=True)
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                    "Tensor dtype in the files (default: the model's parameter dtype).")
  flags.DEFINE_float("max_shard_gib", 4.0, "Split model.safetensors into shards of at most "
                     "this size (GiB), with an index.")


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.log_progress()
  f = flags.FLAGS
  files = export(f.checkpoint, f.out, f.dtype, f.max_shard_gib)
  print(f"wrote {f.out}: {', '.join(files)}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
