r"""Continue a prompt with a pre-trained checkpoint.

  python -m star_jax.generate --checkpoint=smollm2-135m-instruct \
      --prompt="What is 2+2?" --max_new_tokens=32 --chat

Prints only the continuation to stdout (logs go to stderr), so the output can
be piped. Greedy unless --temperature is given.
"""

from __future__ import annotations

import sys
import time

from absl import flags, logging

from star_jax.runtime import cli
from star_jax.runtime.errors import CheckpointError

def define_flags() -> dict:
  """The command's flags (defined only when it runs: the module is a library too)."""
  return {
      "checkpoint": flags.DEFINE_string(
          "checkpoint", None, "A known name (smollm2-135m-instruct), a Hugging Face hub id "
          "(org/name[@revision]) or directory, "
          "a .gguf file, or a star_jax run: WORKDIR, WORKDIR/checkpoints (latest iteration) or "
          "WORKDIR/checkpoints/N.", required=True),
      "prompt": flags.DEFINE_string("prompt", None, "Text to continue.", required=True),
      "max_new_tokens": flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most."),
      "temperature": flags.DEFINE_float("temperature", None,
                                        "Sampling temperature; unset: greedy."),
      "top_k": flags.DEFINE_integer("top_k", 0, "Keep only the k most likely tokens (0: all)."),
      "top_p": flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1: off)."),
      "seed": flags.DEFINE_integer("seed", 0, "Random seed (ignored when greedy)."),
      "chat": flags.DEFINE_bool("chat", False,
                                "Wrap the prompt as a user turn in the chat template."),
      "dtype": flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                                 "Parameter and compute dtype (default: the checkpoint's)."),
  }


FLAGS: dict = {}


def generate(checkpoint: str, prompt: str, max_new_tokens: int, temperature: float | None = None,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, chat: bool = False,
             dtype: str | None = None) -> str:
  """The continuation of ``prompt`` (without the end token) as text."""
  from star_jax.engine import sharding
  from star_jax.experiment.models import load_model
  from star_jax.sampling import sampler as S
  from star_jax.tokenizer import hf_tokenizer

  # One prompt: split the weights over every device (tensor axis), not the batch.
  mesh = sharding.make_mesh((1, 1, -1))
  start = time.perf_counter()
  pre = load_model(checkpoint, mesh, dtype=dtype)
  loaded = time.perf_counter()
  tok = pre.tokenizer
  if tok is None:
    raise CheckpointError(f"{checkpoint} has no tokenizer (tokenizer.json); cannot encode a "
                          "prompt")
  # The rendered template places its own special tokens (as transformers' apply_chat_template).
  ids = tok.encode(hf_tokenizer.chat_prompt(tok, prompt)) if chat else tok.encode_prompt(prompt)
  sampler = S.Sampler(pre.model_cfg, pre.graphdef, mesh, end_ids=tok.end_ids, pad_id=tok.pad_id,
                      batch_size=1)
  sp = S.SamplingParams(temperature=temperature or 0.0, top_k=top_k, top_p=top_p)
  out = sampler.sample(pre.params, [ids], max_new_tokens, sp, seed=seed)
  done = time.perf_counter()
  new = out.sequences(0)
  if new and new[-1] in tok.end_ids:
    new = new[:-1]
  logging.info("load %.2f s; prompt %d tokens; %d new tokens in %.2f s (compile included)",
               loaded - start, len(ids), len(out.sequences(0)), done - loaded)
  return tok.decode(new)


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.log_progress()
  text = generate(**{name: flag.value for name, flag in FLAGS.items()})
  sys.stdout.write(text + "\n")
  sys.stdout.flush()


if __name__ == "__main__":
  FLAGS.update(define_flags())
  cli.run(main)
