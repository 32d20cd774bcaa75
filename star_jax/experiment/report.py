"""What a run tells its user as text: the per-iteration log line and the tables."""

from __future__ import annotations

from typing import Any


def summary_line(m: dict[str, Any]) -> str:
  parts = [f"iter {m['iteration']}", f"eval acc {m['eval_accuracy']:.3f} (n={m['eval_n']})"]
  if "eval_majority_accuracy" in m:
    k = m["eval_samples"]
    parts.append(f"maj@{k} {m['eval_majority_accuracy']:.3f} pass@{k} "
                 f"{m['eval_pass_at'][str(k)]:.3f}")
  if "bstar_temperature" in m:
    keep = ("" if m.get("bstar_threshold") is None
            else f", mean log-prob >= {m['bstar_threshold']:g}")
    parts.append(f"B-STaR T={m['bstar_temperature']:g}{keep} (score {m['bstar_score']:.3f})")
  if m["iteration"] > 0:
    loss = m["train_loss"] if m.get("train_loss") is not None else float("nan")
    if "rl_reward_mean" in m:  # a policy-gradient block (grpo.py): its reward, not a kept set
      wrong = m.get("rl_all_wrong_share")
      shares = (f"all wrong {wrong:.2f}" if wrong is not None
                else f"memory {m.get('trice_memory_share') or 0:.2f}")  # TRICE: one proposal
      parts.append(f"reward {m['rl_reward_first']:.3f} -> {m['rl_reward_last']:.3f} (mean "
                   f"{m['rl_reward_mean']:.3f}, {shares}) over "
                   f"{m['train_questions']} questions")
    else:
      parts.append(f"kept {m['kept']}/{m['train_questions']} "
                   f"(gen {m['solved_by_generation']}, rat {m['solved_by_rationalization']})")
    parts += [f"steps {m['train_steps']}", f"loss {loss:.3f}",
              f"time sample {m['sample_seconds']:.0f}s rationalize "
              f"{m['rationalize_seconds']:.0f}s train {m['train_seconds']:.0f}s "
              f"eval {m['eval_seconds']:.0f}s"]
  return " | ".join(parts)


def kept_line(kept_by: dict[str, dict[str, int]], name: str) -> str:
  """One line: per bucket, questions solved by generation + by rationalization / asked."""
  cells = [f"{b}: {r['generation']}+{r['rationalization']}/{r['questions']}"
           for b, r in kept_by.items()]
  return f"solved by {name} (generation+rationalization/questions): " + ", ".join(cells)


def difficulty_table(metrics: list[dict], key: str) -> str:
  """Iterations as rows, difficulty buckets as columns (accuracy in %)."""
  buckets = sorted({b for m in metrics for b in m.get(key, {})}, key=bucket_key)
  if not buckets:
    return ""
  head = "iter | " + " | ".join(f"{b:>5}" for b in buckets) + " |   all"
  lines = [head, "-" * len(head)]
  for m in metrics:
    cells = [f"{100 * m[key][b]:5.1f}" if b in m.get(key, {}) else "    -" for b in buckets]
    lines.append(f"{m['iteration']:>4} | " + " | ".join(cells)
                 + f" | {100 * m['eval_accuracy']:5.1f}")
  return "\n".join(lines)


def rl_star_table(metrics: list[dict], key: str) -> str:
  """Iterations as rows; per bucket RL-STaR's delta and the predicted / measured accuracy."""
  buckets = sorted({b for m in metrics for b in m.get(key, {}) if b != "all"}, key=bucket_key)
  if not buckets:
    return ""
  head = "iter | " + " | ".join(f"{b:>15}" for b in buckets)
  lines = [head, "     | " + " | ".join(f"{'delta pred meas':>15}" for _ in buckets),
           "-" * len(head)]
  for m in metrics:
    cells = []
    for b in buckets:
      r = m.get(key, {}).get(b)
      cells.append(f"{r['delta']:5.2f} {100 * r['predicted_accuracy']:4.0f} "
                   f"{100 * r['accuracy']:4.0f}" if r else f"{'-':>15}")
    lines.append(f"{m['iteration']:>4} | " + " | ".join(cells))
  return "\n".join(lines)


def closing_summary(metrics: list[dict], workdir, seconds: float) -> str:
  """The run's last lines: final and best accuracy, wall time, and where the results are."""
  final = metrics[-1]
  best = max(metrics, key=lambda m: m["eval_accuracy"])
  lines = [f"finished: {len(metrics) - 1} iterations in {seconds / 60:.1f} min (this process); "
           f"eval accuracy {100 * metrics[0]['eval_accuracy']:.1f}% (M_0) -> "
           f"{100 * final['eval_accuracy']:.1f}% (M_{final['iteration']}), best "
           f"{100 * best['eval_accuracy']:.1f}% at iteration {best['iteration']}",
           f"results in {workdir}: metrics.jsonl, accuracy.png, iter_NNN/{{kept,eval}}.jsonl, "
           f"checkpoints/, tensorboard/ (tensorboard --logdir {workdir}/tensorboard)"]
  return "\n".join(lines)


def bucket_label(label: str, bucket) -> str:
  """A bucket's name from the task's ``difficulty_label``: "2 digits", but "1 digit"."""
  text = label.format(bucket)
  return text[:-1] if str(bucket) == "1" and text.endswith("s") and label != "{}" else text


def bucket_key(b) -> tuple:
  """Sort key for difficulty buckets: integers in numeric order, then names."""
  b = str(b)
  return (0, int(b)) if b.lstrip("-").isdigit() else (1, b)
