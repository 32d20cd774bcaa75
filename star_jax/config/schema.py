"""Every key of a run's config, declared once: its type, default and a one-line comment.

The groups are frozen dataclasses; ``config.load`` turns a ``configs/*.py`` ConfigDict into
a ``Config`` (validated), and nothing below that boundary reads a ConfigDict. The data
group is ``data.DataConfig`` and each task declares its own ``task_options``
(``Task.Options``); ``docs/config.md`` is generated from these declarations
(``python -m star_jax.config.reference``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from star_jax.data.data_config import DataConfig
from star_jax.runtime.declared import group, key

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  preset: str = key("tiny", "a name from engine.model_config.PRESETS (models built here)")
  overrides: dict = key({}, "ModelConfig fields, e.g. num_layers=4; a checkpoint takes only "
                            "how it runs: remat, remat_policy, scan_layers, attention")
  checkpoint: str = key("", "\"\" = random init; WORKDIR/checkpoints; a Hugging Face directory; "
                            "a .gguf file; or a known name (smollm2-135m-instruct)")
  dtype: str = key("", "pre-trained checkpoints: float32 | bfloat16 (\"\" = the checkpoint's)",
                   choices=("",) + DTYPES)
  lora_rank: int = key(0, "> 0: train rank-r adapters (flax nnx.LoRA) on a frozen base; "
                          "0 = full fine-tuning")
  lora_alpha: float = key(8.0, "adapters add (lora_alpha / lora_rank) * x @ A @ B")
  lora_targets: str = key("attention,mlp", "kernels with adapters: q,k,v,o,gate,up,down "
                                           "(Llama), fc_in,fc_out (GPT-J); attention, mlp")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  path: str = key("", "a .model (SentencePiece) or .json (char) file; \"\" = build from data")
  kind: str = key("sentencepiece", "when built from the data", choices=("sentencepiece", "char"))
  vocab_size: int = key(2048, "sentencepiece built from the data: its vocabulary")
  pieces: tuple = key((), "char: multi-character tokens, matched longest first (e.g. ' 7')")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = key(-1, "devices along the batch (-1 = the rest)")
  fsdp: int = key(1, "devices the weights and optimizer state are sharded over")
  tensor: int = key(1, "devices each matmul is split over (tensor parallelism)")


@dataclasses.dataclass(frozen=True)
class StarConfig:
  method: str = key("star", "star | direct (fine-tune on bare answers) | seed_only (train on "
                            "the seed set P) | rest_em | rft | bstar | grpo | reinforce_rej | "
                            "mcts (tree search over steps) | "
                            "a registered method "
                            "(star/methods.py, docs/variants.md): all run STaR's budget")
  iterations: int = key(10, "outer-loop iterations N")
  rationalize: bool = key(True, "give failures a second try with the answer as a hint")
  p_rationalization: float = key(1.0, "share of failures given the hinted try")
  restart_from_base: bool = key(True, "fine-tune M_0 every iteration (paper), not M_{n-1}")
  steps_schedule: str = key("exponential", "base_steps * steps_growth^(n-1) | linear: "
                                           "base_steps + steps_increment * (n-1)",
                            choices=("exponential", "linear"))
  base_steps: int = key(40, "training steps of iteration 1")
  steps_growth: float = key(1.2, "exponential schedule: growth per iteration")
  steps_increment: int = key(20, "linear schedule: steps added per iteration")
  few_shot: bool = key(True, "M_0 is prompted with the task's few-shot exemplars")
  few_shot_in_training: bool = key(False, "fine-tuning texts include the exemplars (then M_n "
                                          "is prompted with them)")
  few_shot_rationalization: bool = key(True, "hinted prompts show exemplars using hints")
  questions_per_iteration: int = key(0, "questions sampled per iteration (0 = the whole train "
                                        "set)")
  curriculum_start: int = key(0, "iteration 1 draws train questions of difficulty (arithmetic: "
                                 "digits) up to this, each later one up to curriculum_step more "
                                 "(0 = every question from the start)")
  curriculum_step: int = key(1, "difficulty levels each iteration adds to what it draws from")
  curriculum: tuple = key((), "the hardest difficulty each iteration draws, in order (the last "
                              "holds after): a pace curriculum_start and curriculum_step cannot "
                              "set, e.g. one level a round, then two; () = theirs")
  balanced_draw: bool = key(False, "with questions_per_iteration: draw the same number of "
                                   "questions of each difficulty (all of a level that has "
                                   "fewer), not in proportion to the pool; a curriculum's "
                                   "short levels keep their share as longer ones open")
  samples_per_question: int = key(1, "rationales sampled per question (> 1 needs "
                                     "star.temperature > 0, bstar's are: k copies of one "
                                     "greedy text are refused)")
  max_kept_per_question: int = key(1, "distinct correct rationales kept per question")
  require_supported: bool = key(True, "keep a right answer only if its rationale itself reaches "
                                      "it (a worded rationale; arithmetic/GSM8K: its result)")
  temperature: float = key(0.0, "sampling temperature (0 = greedy, the paper's)")
  top_k: int = key(0, "sample from the k likeliest tokens (0 = all)")
  top_p: float = key(1.0, "nucleus sampling mass (1 = off)")
  max_new_tokens: int = key(0, "tokens a completion may take (0 = the task's default)")
  bstar_probe_questions: int = key(64, "bstar: questions of the iteration's sample that probe "
                                       "each candidate temperature")
  bstar_temperatures: tuple = key((0.5, 0.7, 0.9, 1.1), "bstar: the candidate sampling "
                                                       "temperatures, scored on the probe")
  bstar_n0: int = key(4, "bstar: distinct correct paths per question that count as full "
                         "exploration (the balance score's n0)")
  bstar_thresholds: tuple = key((), "bstar: candidate keep thresholds on a sample's mean "
                                   "token log-probability (the model's own confidence, in place "
                                   "of the paper's reward score), scored with every temperature "
                                   "next to no threshold; () = the answer check alone")

  def curriculum_top(self, n: int) -> int:
    """The hardest difficulty iteration ``n`` draws from: ``curriculum``'s n-th (its last
    after), else ``curriculum_start + curriculum_step * (n - 1)``; 0: no curriculum."""
    if self.curriculum:
      return int(self.curriculum[min(n, len(self.curriculum)) - 1])
    if not self.curriculum_start:
      return 0
    return self.curriculum_start + self.curriculum_step * (n - 1)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  steps: int = key(0, "warm-start steps on the seed set P (0 = M_0 is the base model as is)")
  data: dict = key({}, "data keys (DataConfig) that differ for the seed set, e.g. max_train")
  task_options: dict = key({}, "task options that differ for the seed set, e.g. digit_counts")
  targets: str = key("rationale", "what P teaches: gold rationales | the bare answer",
                     choices=("rationale", "answer"))
  hint_fraction: float = key(0.0, "share of P shown with the hint, so a from-scratch model "
                                  "learns to read one")
  hinted_task_options: dict = key({}, "task options (on top of task_options) for a second "
                                      "part of P, every text shown with the hint: e.g. longer "
                                      "lengths, so M_0 learns to read a hint where it has no "
                                      "unhinted text; {} = none")
  learning_rate: float = key(0.0, "the warm start's rate (0 = train.learning_rate): learning P "
                                  "may want a higher one than self-training on D")
  train: dict = key({}, "train keys (TrainConfig) that differ for the warm start, e.g. "
                        "batch_size, seq_len: P's texts may be shorter than D's")
  disjoint: bool = key(False, "D (the questions STaR samples) leaves out P's questions, so "
                              "a seed of official solutions and D's answers never overlap")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = key(8, "rows per micro-batch (paper: 8 sequences a step)")
  grad_accum: int = key(1, "micro-batches per step: a step is batch_size x grad_accum rows")
  seq_len: int = key(1024, "tokens per training row")
  pack: bool = key(True, "pack several examples into a row")
  jitter_positions: bool = key(True, "train every method's loss at the positions a position "
                                     "scheme draws at random (arithmetic's position_jitter); "
                                     "False: at the sampler's positions (the policy-gradient "
                                     "methods' samples are on-policy there; docs/variants.md)")
  fit_rows: int = key(0, "0: batch_size rows of seq_len a step; N: rows as long as a "
                         "fine-tune's longest example (rounded up to 64, at most seq_len), as "
                         "many a step as hold N tokens: a curriculum's early rounds, whose "
                         "texts are short, train on short rows at the same tokens a step")
  learning_rate: float = key(1e-6, "Adam's rate (paper: 1e-6, 100 warmup steps, clip 1.0)")
  warmup_steps: int = key(100, "linear warmup steps")
  schedule: str = key("constant", "after warmup", choices=("constant", "linear", "cosine"))
  end_lr_factor: float = key(0.0, "linear/cosine: the final rate as a share of the peak")
  b1: float = key(0.9, "Adam beta1")
  b2: float = key(0.999, "Adam beta2")
  weight_decay: float = key(0.0, "AdamW weight decay")
  clip_norm: float = key(1.0, "global gradient-norm clip (0 = none)")
  master_dtype: str = key("float32", "dtype of the weights and Adam moments training holds "
                                     "(\"\" = the model's; bf16 masters lose small updates)",
                          choices=("",) + DTYPES)
  rounding: str = key("stochastic", "how the masters become the model's dtype (bfloat16) for "
                                    "sampling and saving: stochastic (updates below its spacing "
                                    "survive in expectation) | nearest (they are rounded away)",
                      choices=("stochastic", "nearest"))


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  batch_size: int = key(32, "rows sampled at once")
  layout: str = key("train", "weights while sampling: as training holds them | resharded to "
                             "tensor parallelism for the call", choices=("train", "tensor"))
  shard_size: int = key(512, "questions per saved shard of sampling results (resume unit)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  samples: int = key(0, "k sampled answers per held-out question besides the greedy one: "
                        "pass@k and majority-vote accuracy (0 = greedy only; k > 0 needs "
                        "eval.temperature > 0)")
  temperature: float = key(0.7, "temperature of those k samples (self-consistency: 0.5-0.7)")
  choice_loglik: bool = key(True, "multiple choice: also score the likeliest choice by "
                                  "log-likelihood (eval_choice_loglik_accuracy; one more "
                                  "forward pass over every choice)")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  advantage: str = key("grpo", "grpo: (r - group mean) / (group std + 1e-4), each sequence's "
                               "mean loss (TRL loss_type=grpo) | dr_grpo: r - group mean, loss "
                               "over rows x max_new_tokens (Dr. GRPO) | reinforce: +1 right, -1 "
                               "wrong, a mean over tokens (Reinforce-Rej's)",
                       choices=("grpo", "dr_grpo", "reinforce"))
  drop_uniform_groups: bool = key(False, "drop the groups whose samples are all right or all "
                                         "wrong (Reinforce-Rej); star.method=reinforce_rej "
                                         "sets it")
  questions_per_step: int = key(0, "questions a policy step samples, star.samples_per_question "
                                   "(G) each (0 = train.batch_size x train.grad_accum / G: "
                                   "STaR's rows a step)")
  inner_updates: int = key(1, "updates on each sampled batch (mu; 1 = on-policy, ratio 1)")
  clip_epsilon: float = key(0.2, "the surrogate's clip: ratios outside 1 +- epsilon carry no "
                                 "gradient")
  clip_epsilon_high: float = key(0.0, "the upper clip (0 = clip_epsilon; DAPO: 0.28)")
  kl_beta: float = key(0.0, "k3 KL penalty to M_0 (TRL's default 0.0; DeepSeekMath 0.04)")
  log_kl: bool = key(True, "log the KL to M_0 when kl_beta = 0 too (one more forward a step)")
  hint: bool = key(False, "GRPO with STaR's hint: a group whose samples are all wrong is "
                          "sampled again with the answer as a hint (the rationalization "
                          "prompt); the right, supported hinted samples join the group, trained "
                          "on the prompt without the hint (star.method=grpo_hint sets it)")
  hint_samples: int = key(0, "hinted samples drawn for each all-wrong group (0 = "
                             "star.samples_per_question)")
  trice_control_variate: bool = key(True, "trice: subtract c x grad log p of the wrong "
                                          "proposals, c the step's leave-one-out acceptance "
                                          "(False: c = 0, STaR's step on the memories)")
  pack_rows: bool = key(True, "pack a step's samples several a row (segments apart: the same "
                              "loss) in the fewest token slots, train.batch_size, / 2 or / 4 "
                              "rows; False: one a row, padded to the longest")


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
  enabled: bool = key(False, "V-STaR: train a verifier with DPO on the iterations' right and "
                             "wrong samples; with eval.samples = k, best-of-k by its score. "
                             "Needs star.method star | rest_em | rft | bstar sampling "
                             "star.samples_per_question >= 2 at a temperature > 0 (else "
                             "refused: no question could have a right and a wrong sample)")
  every_iteration: bool = key(False, "train one after every iteration (default: after the "
                                     "last), each on all samples so far")
  init: str = key("base", "the verifier's start and DPO's frozen reference: base = M_0 (the "
                          "paper's SFT model) | generator = M_n", choices=("base", "generator"))
  beta: float = key(0.1, "DPO's beta; a sample's score is beta x log pi_v / pi_ref of its "
                         "completion")
  pairs_per_question: int = key(8, "(right, wrong) pairs drawn per question from every "
                                   "iteration's samples (0 = all of them)")
  heldout_share: float = key(0.1, "share of the questions whose pairs are not trained on: the "
                                  "verifier's held-out pairwise accuracy")
  batch_pairs: int = key(16, "pairs a DPO step trains on (2 rows each, in micro-batches of "
                             "at most train.batch_size rows)")
  epochs: float = key(2.0, "passes over the training pairs")
  max_steps: int = key(0, "cap on DPO steps (0 = no cap)")
  learning_rate: float = key(1e-5, "peak learning rate of the DPO steps (train.* for the rest "
                                   "of the schedule)")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  width: int = key(4, "star.method=mcts: children an expansion samples (k); each distinct step "
                      "is one child")
  rollouts: int = key(2, "rollouts to the answer that value a new node (R); Q = their mean "
                         "reward, backed up to the root")
  c_uct: float = key(1.0, "UCT's exploration weight c: Q + c sqrt(ln N_parent / N_child)")
  temperature: float = key(0.7, "the temperature expansions and rollouts sample at (the search "
                                "reads it, not star.temperature)")
  budget_tokens: int = key(0, "sampled tokens a question's search may spend, expansions and "
                              "rollouts together (0 = width x (1 + rollouts) x the task's "
                              "max_new_tokens x 2)")
  step_tokens: int = key(64, "most tokens one step may take")
  max_depth: int = key(16, "most steps a completion may have")
  reward_wrong: float = key(-1.0, "a wrong answer's reward, a right one's 1 (rStar-Math: -1; "
                                  "ReST-MCTS*: 0)")


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole run. ``task_options`` is the task's own ``Options`` once loaded."""
  task: str = key("arithmetic", "cqa | gsm8k | arithmetic | \"module.path:TaskClass\"")
  task_options: Any = key({}, "the task's own options (its Options class: docs/config.md)")
  seed: int = key(0, "model init, training batches and sampling")
  checkpoint_every: int = key(100, "train steps between train-state checkpoints (resume)")
  checkpoint_async: bool = key(True, "write checkpoints while the next steps train")
  compilation_cache: str = key("workdir", "where compiled programs are kept for the next "
                               "process (a resumed run skips its compiles): workdir = "
                               "$JAX_COMPILATION_CACHE_DIR if set, else "
                               "WORKDIR/compilation_cache; a directory (local or gs://) that "
                               "runs share; \"\" = off")
  model: ModelSpec = group(ModelSpec, "the decoder: preset or checkpoint, LoRA")
  tokenizer: TokenizerConfig = group(TokenizerConfig, "models built here: their tokenizer")
  mesh: MeshConfig = group(MeshConfig, "device mesh axes")
  data: DataConfig = group(DataConfig, "where examples come from and how many")
  star: StarConfig = group(StarConfig, "the STaR loop (Algorithm 1)")
  pretrain: PretrainConfig = group(PretrainConfig, "the seed set P: warm start of M_0")
  train: TrainConfig = group(TrainConfig, "fine-tuning")
  sample: SampleConfig = group(SampleConfig, "the sampler")
  eval: EvalConfig = group(EvalConfig, "evaluation beyond greedy: self-consistency, pass@k")
  rl: RLConfig = group(RLConfig, "policy-gradient methods: star.method=grpo | grpo_hint | "
                                 "reinforce_rej | trice")
  verifier: VerifierConfig = group(VerifierConfig, "V-STaR: a DPO verifier on right and wrong "
                                                   "samples, best-of-k")
  search: SearchConfig = group(SearchConfig, "star.method=mcts: tree search over the steps "
                                             "of a completion (star/search.py)")


# Keys that change how a run is executed but not its results: free to differ on resume.
OPERATIONAL_KEYS = frozenset({
    "checkpoint_every", "checkpoint_async", "compilation_cache", "sample.shard_size",
    "data.download", "data.tfds_dir", "data.download_timeout_s",
    # iteration n depends on n alone (its questions, steps and seed), so a finished run can
    # be extended by more iterations, or stopped earlier
    "star.iterations"})
# Groups whose keys are not declared here but by another class (checked by config.load).
FREE_FORM = ("task_options", "model.overrides", "pretrain.data", "pretrain.task_options",
             "pretrain.hinted_task_options")
