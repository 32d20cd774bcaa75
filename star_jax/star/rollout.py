"""Running the model over questions: rationale generation, rationalization, evaluation.

Evaluation beyond greedy: k sampled answers per held-out question (``eval.samples`` at
``eval.temperature``) scored as pass@j and as a majority vote (self-consistency, Wang et al.
2022, arXiv 2203.11171), overall and per difficulty bucket (``sampled_eval``):

  pass@j        the unbiased estimator of Chen et al. (2021) from the k samples, c of them
                right: 1 - C(k - c, j) / C(k, j), for j = 1, 2, 4, ... and k itself
  majority      the answer most samples give (unanswered samples do not vote) is right;
                ties go to the tied answer that appears first in sample order; a question
                whose samples give no answer counts as wrong
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Sequence

import numpy as np
from etils import epath

from star_jax.runtime import distributed, failpoints
from star_jax.runtime.progress import progress
from star_jax.sampling import Sampler, SamplingParams
from star_jax.sampling.scoring import continuation_logprobs
from star_jax.star import diagnostics
from star_jax.experiment.report import bucket_key
from star_jax.experiment.workdir import Shards
from star_jax.tasks import Example, Task
from star_jax.tokenizer import Tokenizer


@dataclasses.dataclass
class Generation:
  example: Example
  texts: list[str]  # one per sample
  predictions: list[str | None]
  correct: list[bool]
  # Each sample's mean token log-probability under the model (its confidence); None where
  # unknown (a sample phase saved before scores were kept).
  scores: list[float] | None = None
  # Each sample's length in tokens, as sampled (None: unknown, a phase saved before).
  lengths: list[int] | None = None

  @classmethod
  def of(cls, task: Task, example: Example, texts: list[str], scores=None,
         lengths=None) -> "Generation":
    """``example``'s sampled ``texts``, their answers read and checked by ``task``."""
    preds = [task.extract_answer(t) for t in texts]
    return cls(example, texts, preds, [task.is_correct(p, example) for p in preds], scores,
               lengths)


def fitting_prompts(task: Task, tokenizer: Tokenizer, sampler: Sampler,
                    examples: Sequence[Example], *, hint: bool, few_shot: bool
                    ) -> tuple[list[Example], list[list[int]]]:
  """The examples whose prompt leaves room for ``task.max_new_tokens`` in the model's
  context, and their encoded prompts (the rest are the caller's to count as skipped)."""
  limit = sampler.cfg.max_seq_len - task.max_new_tokens
  kept, prompts = [], []
  for ex in examples:
    ids = tokenizer.encode_prompt(task.prompt(ex, hint=hint, few_shot=few_shot))
    if len(ids) <= limit:
      kept.append(ex)
      prompts.append(ids)
  return kept, prompts


def tokens_sampled(gens: Sequence[Generation]) -> int | None:
  """The tokens the samples of ``gens`` took (None when a phase did not record lengths)."""
  if any(g.lengths is None for g in gens):
    return None
  return int(sum(sum(g.lengths) for g in gens))


def mean_logprob(out, prompt: int, sample: int) -> float:
  """The mean log-probability of a sampled completion's tokens (0 for an empty one)."""
  length = len(out.sequences(prompt, sample))
  return float(np.mean(out.logprobs[prompt, sample, :length])) if length else 0.0


def generate(task: Task, tokenizer: Tokenizer, sampler: Sampler, params,
             examples: Sequence[Example], *, hint: bool, few_shot: bool,
             sampling: SamplingParams, n: int, seed: int, desc: str,
             shard_dir: epath.PathLike | None = None, shard_size: int = 0
             ) -> tuple[list[Generation], int]:
  """Samples ``n`` completions per example; returns generations and the count skipped.

  Examples whose prompt leaves no room for ``task.max_new_tokens`` in the model's
  context are skipped and counted (never silently dropped). With ``shard_dir``,
  results are saved every ``shard_size`` examples and shards already there are
  reused, so a killed phase resumes where it stopped; the samples are the same
  either way (each prompt's randomness depends on its index in ``examples``).
  """
  kept, prompts = fitting_prompts(task, tokenizer, sampler, examples, hint=hint,
                                  few_shot=few_shot)
  skipped = len(examples) - len(kept)
  shards = Shards(shard_dir)
  size = shard_size if shard_size > 0 else max(len(kept), 1)
  texts: list[list[str]] = []
  scores: list[list[float] | None] = []
  lengths: list[list[int] | None] = []
  with progress(len(prompts) * n, desc, "seq") as bar:
    for k, start in enumerate(range(0, len(kept), size)):
      chunk = kept[start:start + size]
      ids = [ex.id for ex in chunk]
      rows = shards.load(k, ids)
      if rows is None:
        limits = [task.completion_limit(ex, tokenizer) for ex in chunk]
        out = sampler.sample(params, prompts[start:start + size], limits, sampling,
                             n=n, seed=seed, stop_strings=task.stop_strings,
                             decode_fn=tokenizer.decode, progress=bar.update, first_index=start)
        rows = [{"id": ex.id, "texts": [tokenizer.decode(out.sequences(i, j)) for j in range(n)],
                 "scores": [mean_logprob(out, i, j) for j in range(n)],
                 "lengths": [len(out.sequences(i, j)) for j in range(n)]}
                for i, ex in enumerate(chunk)]
        shards.save(k, rows)
        failpoints.hit("sample_shard")
        distributed.safe_point(desc, start + len(chunk), len(kept))  # after a notice: stop here
      else:
        bar.update(len(chunk) * n)
      texts += [r["texts"] for r in rows]
      scores += [r.get("scores") for r in rows]
      lengths += [r.get("lengths") for r in rows]
  gens = [Generation.of(task, ex, ts, sc, ln)
          for ex, ts, sc, ln in zip(kept, texts, scores, lengths)]
  return gens, skipped


@dataclasses.dataclass
class EvalResult:
  accuracy: float
  n: int
  records: list[dict]
  by_difficulty: dict[str, float]  # difficulty bucket -> accuracy (empty if the task has none)
  skipped_too_long: int
  seconds: float = 0.0
  choice_loglik: dict[str, float] | None = None  # multiple choice: see choice_loglik_accuracy
  sampled: dict | None = None  # eval.samples > 0: pass@k and majority vote (sampled_eval)


def evaluate(task: Task, tokenizer: Tokenizer, sampler: Sampler, params,
             examples: Sequence[Example], *, few_shot: bool, seed: int,
             shard_dir: epath.PathLike | None = None, shard_size: int = 0) -> EvalResult:
  """Greedy accuracy over every example (too-long prompts count as wrong)."""
  gens, skipped = generate(task, tokenizer, sampler, params, examples, hint=False,
                           few_shot=few_shot, sampling=SamplingParams(), n=1, seed=seed,
                           desc="evaluate", shard_dir=shard_dir, shard_size=shard_size)
  records = []
  by_bucket: dict[str, list[bool]] = collections.defaultdict(list)
  done = {g.example.id for g in gens}
  for g in gens:
    rec = {"id": g.example.id, "prediction": g.predictions[0], "gold": g.example.answer,
           "correct": g.correct[0], "text": g.texts[0]}
    d = task.difficulty(g.example)
    if d is not None:
      rec["difficulty"] = d
      by_bucket[str(d)].append(g.correct[0])
    rec.update(diagnostics.step_fields(task, g.texts[0], g.example))
    label = task.predicted_label(g.predictions[0], g.example)
    if label is not None:
      rec["label"] = label
    records.append(rec)
  for ex in examples:  # too long for the context: scored, as wrong
    if ex.id not in done:
      records.append({"id": ex.id, "prediction": None, "gold": ex.answer, "correct": False,
                      "text": "", "skipped": "prompt too long"})
      d = task.difficulty(ex)
      if d is not None:
        by_bucket[str(d)].append(False)
  correct = sum(r["correct"] for r in records)
  by_difficulty = {k: float(np.mean(by_bucket[k])) for k in sorted(by_bucket, key=bucket_key)}
  return EvalResult(correct / max(len(records), 1), len(records), records, by_difficulty,
                    skipped)


def label_shares(task: Task, records: list[dict]) -> dict[str, float]:
  """Multiple choice: the share of answers naming each label ("none": naming no choice)."""
  if not any("label" in r for r in records):
    return {}
  counts = collections.Counter(r.get("label", "none") for r in records)
  return {k: counts[k] / len(records) for k in sorted(counts)}


def choice_loglik_accuracy(task: Task, tokenizer: Tokenizer, sampler: Sampler, params,
                           examples: Sequence[Example]) -> dict[str, float] | None:
  """Multiple choice: accuracy of the likeliest choice (the peers' usual score), by summed
  log-probability (acc) and per character (acc_norm); None for tasks without choices."""
  if not examples or task.multiple_choice(examples[0]) is None:
    return None
  contexts, conts, spans = [], [], []
  for ex in examples:
    context, choices, gold = task.multiple_choice(ex)
    ids = tokenizer.encode_prompt(context)
    spans.append((len(conts), gold, [len(c) for c in choices]))
    for c in choices:
      contexts.append(ids)
      conts.append(tokenizer.encode(c))
  scores = continuation_logprobs(sampler.graphdef, sampler.mesh, params, contexts, conts)
  acc = acc_norm = 0
  for start, gold, chars in spans:
    s = scores[start:start + len(chars)]
    acc += int(np.argmax(s)) == gold
    acc_norm += int(np.argmax(s / np.asarray(chars))) == gold
  return {"acc": acc / len(spans), "acc_norm": acc_norm / len(spans)}


def pass_at_k(n: int, c: int, k: int) -> float:
  """The unbiased pass@k of ``n`` samples with ``c`` right: the chance that ``k`` of them,
  drawn without replacement, hold a right one."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(predictions: Sequence[str | None]) -> str | None:
  """The most frequent answer (None never votes); a tie goes to the answer seen first."""
  counts = collections.Counter(p for p in predictions if p is not None)
  if not counts:
    return None
  top = max(counts.values())
  return next(p for p in predictions if p is not None and counts[p] == top)


def ks(n: int) -> list[int]:
  """The j of pass@j reported for n samples: powers of two below n, and n."""
  return sorted({2 ** i for i in range(n.bit_length()) if 2 ** i < n} | {n})


def sampled_eval(task: Task, gens: Sequence[Generation], examples: Sequence[Example], k: int,
                 temperature: float) -> dict:
  """pass@j and majority accuracy over ``examples`` (those without a generation: a prompt too
  long for the context, count as wrong), overall and per difficulty bucket."""
  by_id = {g.example.id: g for g in gens}
  rows = []  # (bucket, right samples, majority right)
  for ex in examples:
    g = by_id.get(ex.id)
    c = sum(g.correct) if g else 0
    vote = majority_vote(g.predictions) if g else None
    d = task.difficulty(ex)
    rows.append((None if d is None else str(d), c, vote is not None and task.is_correct(vote, ex)))
  js = ks(k)
  out = {"samples": k, "temperature": temperature,
         "pass_at": {str(j): _mean([pass_at_k(k, c, j) for _, c, _ in rows]) for j in js},
         "majority_accuracy": _mean([m for _, _, m in rows]),
         "by_difficulty": {}}
  buckets = sorted({b for b, _, _ in rows if b is not None}, key=bucket_key)
  for b in buckets:
    mine = [(c, m) for bb, c, m in rows if bb == b]
    out["by_difficulty"][b] = {"pass_at_k": _mean([pass_at_k(k, c, k) for c, _ in mine]),
                               "majority": _mean([m for _, m in mine])}
  return out


def _mean(values) -> float:
  return float(np.mean(values)) if len(values) else 0.0
