"""Profiles: named, validated sets of settings for every stage.

`get_profile()` picks the profile from ``TINYRLHF_PROFILE`` (default: ``rtx4060`` when CUDA is available,
else ``cpu``), applies overrides (keyword ``section__field=value``, or ``TINYRLHF_OVERRIDES`` holding a JSON
object of ``"section.field": value``) and validates every value, failing at once with what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .nvidia import nvidia_presence

PRECISIONS = ("bf16", "int8", "int4")
NULL_ARM = "null"  # a second bf16 reward model with another seed: its "tax" is the noise floor (negative control)
# bf16 trained with a share of the training labels flipped (Coste et al. 2023's label noise): a reward model known to
# be worse, whose tax the instrument must detect (positive control)
NOISY_ARM = "noisy"
# Best-of-n only: each seed's bf16 reward model (trained in bf16) scored with its backbone quantized after training
SERVED_PREFIX = "served-"
# Best-of-n's bits sweep (EvalSettings.serve_bits): each bf16-trained reward model also served with its backbone's
# weights at k bits, group-wise (torchao's IntxWeightOnlyConfig; reward.serve_at_bits): the arm "served-w<k>"
SERVE_BITS = (2, 3, 4, 5, 6, 7, 8)
NULL_SEED_OFFSET = 1000  # the null arm's reward model for seed s trains with seed s + this
DATA_SOURCES = ("auto", "synthetic", "hub", "local")
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled", "red-team-attempts")
DEVICES = ("auto", "cpu", "cuda")
REPORTERS = ("none", "tensorboard", "wandb")  # where the trainers also log (TrainingArguments.report_to)
# How an int8 reward model multiplies on the CPU (RMSettings.int8_cpu_matmul, reward.pin_int8_matmul): bitsandbytes
# 0.50 trains int8 layers on the CPU through their int8 weights dequantized to float (MatMul8bitFp) but, in eval
# mode, scores through LLM.int8 (MatMul8bitLt: activations quantized to int8 too), 0.56-0.66x bf16's speed at the
# real size here.
INT8_CPU_MATMULS = ("dequantized", "llm.int8")
CPU_KERNELS = ("auto", "dense", "bitsandbytes")  # RMSettings.cpu_kernel (tinyrlhf.kernels)
RM_CPU_DTYPES = ("auto", "fp32")  # RMSettings.cpu_dtype
# BaseSettings.train_dtype: the dtype models are loaded in and train under (runtime.train_dtype). "auto": bf16 on a
# card that supports it, float32 elsewhere; "bf16" on a CPU runs the card's dtypes there (emulated and slow without
# AVX512-BF16): the card-faithful check of benchmarks/real_size_memory.py.
TRAIN_DTYPES = ("auto", "bf16", "fp32")
# RMSettings.label_noise_on: which training pairs the noisy arm's flips are drawn from first. "any": uniformly
# (Coste et al.'s label noise); a synthetic category (synthetic.CATEGORIES); "auto": "rude" on the synthetic data,
# "any" on any other (only the synthetic data has categories).
LABEL_NOISE_ON = ("auto", "any", "rude", "off_topic", "harmful")
# RMSettings.labels: the training pairs' labels as the data gives them (human preferences), or each pair relabelled
# by the judge's scores (Gao et al. 2022's design: the judge is then the gold the proxies learn)
RM_LABELS = ("data", "judge")
JUDGES = ("auto", "gold", "heldout")  # or a path / hub id of a sequence-classification reward model
# EvalSettings.second_judge: "same-recipe" also judges best-of-n's pool with a bf16 reward model of the bf16 arm's
# recipe and size trained on freshly generated pairs no arm saw (synthetic data only: the only data that can be
# generated afresh), to measure how far a judge that resembles an arm moves the taxes; "auto": on synthetic data.
SECOND_JUDGES = ("auto", "none", "same-recipe")
VALUE_INITS = ("sft",)
TOP_LEVEL = ("seed", "device", "report_to", "workers", "threads")
# The hub commits the project downloads: `revision="auto"` (base.revision, data.revision, eval.judge_revision)
# resolves to these; a hub id not listed loads its latest commit ("latest") unless its revision is set. A revision is
# part of its section's settings, so a changed one reruns the stages that read it. (The commits are the snapshot
# folder names of the hub's cache.)
PINNED_REVISIONS = {"Qwen/Qwen2.5-0.5B": "060db6499f32faf8b98477b0a26969ef7d8b9987",
                    "Anthropic/hh-rlhf": "09be8c5bbc57cb3887f3a9732ad6aa7ec602a1fa",
                    # "Skywork/Skywork-Reward-V2-Llama-3.2-1B" (the rtx4060 judge): no hub here to read its commit.
                    # Until it is listed, each workdir pins it at its first download (FIRST_DOWNLOAD); add the sha a
                    # run with hub access records in models/hub-pins.json here.
                    }
LATEST = "latest"  # a revision that pins nothing
# eval.judge_revision of a hub id not in PINNED_REVISIONS ("auto" resolves to it): the commit the first load in a
# workdir gets, recorded in Paths.hub_pins and loaded by every later one (evaluate.judge_pin)
FIRST_DOWNLOAD = "first-download"


def hub_revision(revision: str) -> str | None:
    """The `revision=` argument for the hub: None for LATEST."""
    return None if revision == LATEST else revision


PPO_RUN_STRIDE = 100  # PPOSettings.runs_per_model: run r's PPO seed is the reward-model seed + r * this

SCRATCH_MODEL = "scratch-qwen2"  # the cpu profile's base model: a small Qwen2 built and pre-trained here
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A profile name or setting that is not allowed; the message says what is."""


def _positive(v):
    return v > 0


def _share(v):
    return 0.0 < v < 1.0


def _nonneg(v):
    return v >= 0


def _unit(v):
    return 0.0 <= v <= 1.0


# Range checks per field name; a field without one is only type-checked (and must be > 0 if it is a number).
_RULES = {
    "test_fraction": (_share, "a number strictly between 0 and 1"),
    "max_skipped_share": (_unit, "a number between 0 and 1"),
    "off_topic_share": (_unit, "a number between 0 and 1"),
    "rude_share": (_unit, "a number between 0 and 1"),
    "comply_share": (_unit, "a number between 0 and 1"),
    "dropout": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "lora_dropout": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "warmup": (lambda v: 0.0 <= v < 1.0, "a warm-up ratio in [0, 1)"),
    "clip": (_share, "a clip range strictly between 0 and 1"),
    "kl_coef": (_nonneg, "a number >= 0"),
    "missing_eos_penalty": (_nonneg, "a number >= 0"),
    "temperature": (_positive, "a number > 0"),
    "hidden_size": (lambda v: v > 0 and v % 64 == 0, "a positive multiple of 64 (bitsandbytes 4-bit blocks)"),
    "intermediate_size": (lambda v: v > 0 and v % 64 == 0, "a positive multiple of 64 (bitsandbytes 4-bit blocks)"),
    "threads": (_nonneg, "an integer >= 0 (0: torch's default)"),
    "rm_threads": (_nonneg, "an integer >= 0 (0: chosen from the cores, see PPOSettings)"),
    "max_pairs": (_nonneg, "an integer >= 0 (0: keep all)"),
    "control_seeds": (_nonneg, "an integer >= 0 (0: every seed of rm.seeds)"),
    "seeds_chosen": (_nonneg, "an integer >= 0 (set by 03 under rm.seeds='auto'; 0: not chosen yet)"),
    "rm_seeds": (_nonneg, "an integer >= 0 (0: every seed of rm.seeds)"),
    "label_noise": (_share, "a share strictly between 0 and 1"),
    "eval_every": (_positive, "an integer > 0 (training steps between validation evaluations)"),
    "patience": (_positive, "an integer > 0 (evaluations without a better validation accuracy before stopping)"),
    "validation_pairs": (_positive, "an integer > 0 (training pairs held out for early stopping)"),
    "headline_n": (_nonneg, "an integer >= 0 (0: n*, where bf16's gold gain peaks on the same data)"),
}
MAY_BE_EMPTY = ("serve_bits",)  # () turns best-of-n's bits sweep off


@dataclass(frozen=True)
class DataSettings:
    source: str = "auto"  # auto: `local` when TINYRLHF_HH_DIR is set, else synthetic (cpu) or hub (GPU)
    default_source: str = "synthetic"
    hub_id: str = "Anthropic/hh-rlhf"
    revision: str = "auto"  # the hub commit of hub_id: "auto" is PINNED_REVISIONS' (resolved by get_profile)
    subsets: tuple = ("harmless-base",)
    synthetic_pairs: int = 1500
    # Share of the synthetic harmless pairs whose rejected reply is polite but about another task (the rest are
    # rude). Measured with 250 reward-model steps: at 0.35 and 0.5 the reward models stayed at or below chance on
    # those pairs (rude and harmful ones are learned within a few dozen steps); at 0.75 all four reached 0.70-0.82.
    off_topic_share: float = 0.75
    max_pairs: int = 0  # 0: keep all
    test_fraction: float = 0.1
    max_prompt_tokens: int = 96
    max_response_tokens: int = 48
    max_skipped_share: float = 0.05  # malformed records above this share stop the run


@dataclass(frozen=True)
class BaseSettings:
    model: str = SCRATCH_MODEL  # hub id or local path; SCRATCH_MODEL builds a small Qwen2 here
    revision: str = "auto"  # the hub commit of `model`: "auto" is PINNED_REVISIONS' (resolved by get_profile)
    vocab_size: int = 768
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2  # grouped-query attention, as in Qwen2.5
    intermediate_size: int = 384
    # The scratch model pre-trains on a corpus of the synthetic world (polite and rude answers, refusals and
    # harmful compliance, never another task's steps), kept apart from the preference pairs as a real base
    # model's corpus is; it then binds each request to its own task, and the SFT has rudeness left to fix.
    pretrain_dialogues: int = 2500
    rude_share: float = 0.35
    comply_share: float = 0.5
    pretrain_steps: int = 300  # measured: the loss is within 0.01 of its 400-step value
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    trust_remote_code: bool = False
    train_dtype: str = "auto"  # one of TRAIN_DTYPES


@dataclass(frozen=True)
class SFTSettings:
    batch_size: int = 16
    accum: int = 1
    lr: float = 2e-3
    epochs: float = 1.0
    # Short on purpose: 40 steps leave 4% rude replies and 83% perfect ones, i.e. nothing for PPO to fix;
    # 12 steps leave about a third rude (measured), which PPO then has to remove.
    max_steps: int = 12
    warmup: float = 0.1
    dropout: float = 0.05
    lora_r: int = 16
    lora_alpha: int = 32
    target_modules: tuple = ATTENTION
    gradient_checkpointing: bool = False
    eval_pairs: int = 200
    sample_prompts: int = 4


@dataclass(frozen=True)
class RMSettings:
    precisions: tuple = PRECISIONS
    # The reward-model seeds: the unit of replication. Each seed trains one reward model per precision (the same
    # seed: the same data order, LoRA and head initialisation, so precisions are paired within a seed), the null
    # arm's and the noisy arm's; intervals resample them. With one reward model per arm, a second bf16 seed moved as
    # much as int8 or int4 did. Seven on the cpu profile: best-of-n's int4 tax differs from seed to seed by about 5% of
    # bf16's gain (sd), so its interval reaches +-5 points with 7 seeds (+-6.1 with 5, measured).
    seeds: tuple = (0, 1, 2, 3, 4, 5, 6)
    # rm.seeds = "auto": seeds until resolved (GPU profiles; tinyrlhf.sequential). get_profile makes the seeds the
    # candidates 0 .. seeds_max - 1 and seeds_rule "auto"; 03 trains and ranks the pool with the first seeds_min, then
    # adds one paired set (a model per arm) at a time until the widest of the headline arms' best-of-n tax half-widths
    # is at most seeds_target (a share of bf16's gain) or seeds_max is reached; seeds_chosen is then how many it used
    # (0 while not chosen), and later stages run on those. PPO trains on the first ppo.rm_seeds of them.
    seeds_rule: str = "fixed"
    seeds_target: float = 0.10
    seeds_min: int = 3
    seeds_max: int = 8
    seeds_chosen: int = 0
    # The null and noisy arms train on the first `control_seeds` of them (0: all). Controls need fewer: the noisy arm's
    # effect is large (a tax of +200% in best-of-n), and the null arm's interval, wider than the precisions', must
    # hold 0; 15 minutes on 2 cores pay for 7 precision seeds only with 3 control seeds.
    control_seeds: int = 3
    null_arm: bool = True  # per seed, a second bf16 reward model (seed + NULL_SEED_OFFSET): the negative control
    noisy_arm: bool = True  # per seed, bf16 with `label_noise` of the training labels flipped: the positive control
    label_noise: float = 0.25
    # Which pairs those flips are drawn from first (LABEL_NOISE_ON). Measured on the cpu profile: 25% flipped
    # uniformly leaves every category mostly right, and PPO on those models gained more than on bf16's (+0.32 vs
    # +0.24; KL 0.60 vs 1.07), so PPO could not detect it; the same 25% drawn from the rude pairs first (they are 24%
    # of the pairs) makes a reward model that prefers rudeness, which gold penalises.
    label_noise_on: str = "auto"
    # RM_LABELS: "judge" relabels every training pair by eval.judge's scores before any reward model trains (a judge
    # that exists before them: gold, or a public reward model; not heldout, which learns the data's labels itself)
    labels: str = "data"
    batch_size: int = 8
    accum: int = 1
    lr: float = 1e-3
    epochs: float = 1.0
    max_steps: int = 400  # about 2.6 epochs of batch 8; measured: at 250 the bf16 seed stayed at 0.56 on off-topic pairs
    warmup: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple = ALL_LINEAR
    double_quant: bool = True
    eval_pairs: int = 300
    # Training to a plateau rather than to a clock (the GPU profiles, where a few thousand of ~80,000 real pairs may
    # or may not be enough): `validation_pairs` of the training pairs held out by prompt (the same for every arm of a
    # seed), the validation accuracy every `eval_every` steps, a stop after `patience` evaluations without a better
    # one (transformers' EarlyStoppingCallback), the best checkpoint kept; rm.max_steps is then a cap. Off on cpu:
    # its numbers are the fixed-step design's.
    early_stopping: bool = False
    eval_every: int = 25
    patience: int = 3
    validation_pairs: int = 500
    # How a quantized reward model scores on the CPU (tinyrlhf.kernels): "auto" (its dense copy, the weights
    # dequantized once as bitsandbytes trains them, when that fits a quarter of the available RAM; else
    # bitsandbytes' own layers), "dense" or "bitsandbytes". 03 records how far every path agrees on the test pairs
    # (reward.compare_cpu_kernels).
    cpu_kernel: str = "auto"
    # An int8 model on bitsandbytes' layers: "dequantized" (its CPU training forward, the same int8 weights) or
    # "llm.int8" (its eval-mode path, activations quantized too).
    int8_cpu_matmul: str = "dequantized"
    # The dtype reward models compute in on the CPU (training on a CPU, and all CPU scoring): "auto" is bf16 where the
    # CPU runs it natively (AVX512-BF16/AMX), else float32; "fp32" everywhere. The cpu profile keeps float32: its tiny
    # models trained 1.5x faster in float32 than in native bf16 on an AMX CPU (240 steps: 21.7 s vs 32.2 s) with
    # 0.3 GiB less memory, and every kind of CPU then runs the same arithmetic. At Qwen2.5-0.5B's size native bf16
    # scores 3.4x faster than float32 (docs/rm-scoring.json): the rtx4060 profiles use "auto".
    cpu_dtype: str = "fp32"


@dataclass(frozen=True)
class PPOSettings:
    # PPO runs per reward model (arm and reward-model seed); run r against seed s uses PPO seed s + 100 * r, the
    # same for every arm (paired)
    runs_per_model: int = 1
    # The go/no-go before PPO (tinyrlhf.gate): when on, 04 does not start when bf16's best-of-n gain interval holds
    # 0 or a bf16 reward model is at chance. On for the GPU profiles (hours at stake); off on cpu, whose real-data
    # path (TINYRLHF_HH_DIR) runs to the end with reward models at chance by design. It decides whether PPO runs,
    # not what it computes: not part of any stage's settings hash.
    gate: bool = False
    # PPO trains against the reward models of the first `rm_seeds` of rm.seeds (0: all); a control arm against those
    # of them it has. Five resolve the PPO taxes to about +-25 points on the cpu profile (measured: +-20 and +-23).
    rm_seeds: int = 5
    ppo_batch: int = 32  # rollouts per PPO update
    mini_batch: int = 8  # sequences per optimizer step: ppo_batch / mini_batch steps per PPO epoch
    micro_batch: int = 8  # sequences per forward/backward pass; gradients accumulate up to mini_batch
    rollout_chunk: int = 32  # sequences generated and scored at once during a rollout
    ppo_epochs: int = 2
    # Measured with LoRA on every linear layer (5 bf16 reward-model seeds, 8 updates): 1.5e-3 reached KL 3-8 and
    # gained less (+0.28); 7e-4 gained +0.43 at KL 0.6-2, as much as 1e-3 (+0.41) at lower KL.
    ppo_lr: float = 7e-4
    lr_scheduler: str = "linear"  # TRL's default; measured: "constant" at this lr overshot late in the run
    max_new: int = 48  # >= data.max_response_tokens: every chosen reply fits
    clip: float = 0.2
    kl_coef: float = 0.05
    steps: int = 8  # PPO updates per run; the judge's reward levels off after about 10, 8 keeps 5 notebooks in 15 min
    temperature: float = 1.0
    # TRL's missing_eos_penalty: subtracted from every score (proxy and judge alike, in PPO and in evaluation)
    # of a reply that reaches max_new without the end-of-sequence token.
    missing_eos_penalty: float = 1.0
    # Where PPO's reward model scores rollouts: "cpu" (the design: the card keeps its memory for policy and value
    # model) or "cuda" (faster at the real size, if it fits; the memory estimate then counts it on the card).
    rm_device: str = "cpu"
    # torch threads while the reward model scores on the CPU. 0: with the policy on a GPU, the physical cores less
    # one (the process driving the GPU keeps a core: sharing it slowed scoring 2.1-2.6x, measured); with the
    # policy on the CPU, the job's threads (scoring and training take turns there).
    rm_threads: int = 0
    # Reward scoring of each rollout chunk on a CPU thread while the card generates the next one (ppo.OverlappedScoring):
    # "auto" where the policy is on a GPU and the reward model on the CPU, "on" anywhere (the same numbers: tested on
    # the CPU), "off" to score after the whole rollout as TRL does.
    overlap_scoring: str = "auto"
    value_init: str = "sft"  # every arm's value model: the SFT model with a fresh head, the same for all arms
    lora_r: int = 16
    lora_alpha: int = 32
    # The policy's and value model's LoRA. Measured on the cpu profile (5 bf16 reward-model seeds, 8 updates): on the
    # attention layers only, PPO gained +0.23 gold over SFT (sd 0.09 across seeds); on every linear layer +0.41
    # (sd 0.11) for 19% more time per run: the same run-to-run noise on a gain nearly twice as large, so every tax
    # is resolved about twice as finely.
    target_modules: tuple = ALL_LINEAR


@dataclass(frozen=True)
class EvalSettings:
    # auto | gold | heldout | path or hub id of a sequence-classification reward model. "auto" follows the data:
    # gold on the synthetic set (the only data whose rules are known), heldout on any other (get_profile resolves it)
    judge: str = "auto"
    # The hub commit of a judge named by hub id: "auto" is PINNED_REVISIONS' (resolved by get_profile; FIRST_DOWNLOAD
    # for an id not listed there: the commit its first load in the workdir gets, kept in models/hub-pins.json),
    # "latest" its newest commit at every load (the judge's record then says "unpinned"). A local folder needs none;
    # gold and heldout ignore it.
    judge_revision: str = "auto"
    prompts: int = 48  # a seeded random sample of the test prompts (all of them when there are fewer)
    samples: int = 8  # replies per prompt at the end of each run (and for the SFT policy)
    checkpoints: int = 5  # evaluations along each run, evenly spaced, the last at the end
    checkpoint_samples: int = 1  # replies per prompt at the earlier checkpoints
    cross_samples: int = 1  # replies per prompt scored by every other reward model (the cross matrix)
    bootstrap: int = 2000  # resamples for the frontier fits' intervals (the taxes' intervals are jackknife-t)
    # Best-of-n: candidates the SFT policy samples per evaluation prompt, judged once, ranked by every reward model
    bon_pool: int = 64
    show_samples: int = 3
    # Where reward models score when no policy trains beside them (03's test pairs and best-of-n pool, 04's cross
    # matrix): "auto" on the card when the profile runs on one (it is idle then: scoring there takes seconds where
    # the CPU takes hours at the real size), "cpu", or "cuda". PPO's rollouts and checkpoint evaluations score where
    # ppo.rm_device says.
    score_device: str = "auto"
    # Where quantization starts to cost: every bf16-trained reward model also ranks the pool served at each of these
    # weight widths (integer weights, asymmetric, one scale and zero point per `serve_group` inputs, by torchao; the
    # served int8/NF4 arms keep bitsandbytes). Scoring only: seconds per model on the cpu profile. () turns it off.
    serve_bits: tuple = (8, 4, 3, 2)
    serve_group: int = 64
    # The n best-of-n's headline compares the arms at, fixed before the run; 0 takes n*, where bf16's gold gain
    # peaks on the same data (a choice made on the data it then reports, said so wherever it is used). Every n's tax
    # is reported too, with a band simultaneous over the n's.
    headline_n: int = 4
    # SECOND_JUDGES: best-of-n's taxes also under a same-recipe judge, beside the judge's (03; issue 33's question)
    second_judge: str = "auto"


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int = 0
    device: str = "auto"
    report_to: str = "none"
    workers: int = 1  # reward models and PPO runs trained at once, each in its own process
    threads: int = 0  # torch threads per reward-model or PPO job (0: torch's default)
    data: DataSettings = field(default_factory=DataSettings)
    base: BaseSettings = field(default_factory=BaseSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    rm: RMSettings = field(default_factory=RMSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Short hash of the named sections (plus seed): a stage's outputs are reused only when it matches."""
        d = self.to_dict()
        for section, name in UNHASHED:
            d[section].pop(name, None)
        payload = {s: d[s] for s in sections} | {"seed": self.seed}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def arms(self) -> tuple:
        """The arms PPO trains against (a reward model per seed each): one per precision, the null and noisy arms."""
        return (tuple(self.rm.precisions) + ((NULL_ARM,) if self.rm.null_arm else ())
                + ((NOISY_ARM,) if self.rm.noisy_arm else ()))

    @property
    def bon_arms(self) -> tuple:
        """The arms best-of-n compares: PPO's, and each quantized precision served from the bf16-trained models."""
        served = tuple(SERVED_PREFIX + p for p in self.rm.precisions if p != "bf16") if "bf16" in self.rm.precisions \
            else ()
        return self.arms + served

    @property
    def bits_arms(self) -> tuple:
        """Best-of-n's bits sweep: each bf16-trained model served at eval.serve_bits' widths (none without bf16)."""
        return tuple(f"{SERVED_PREFIX}w{k}" for k in self.eval.serve_bits) if "bf16" in self.rm.precisions else ()

    def arm_seeds(self, arm: str) -> tuple:
        """The reward-model seeds `arm` has models for: every seed of rm.seeds, the first rm.control_seeds for the
        null and noisy arms (a served arm's models are bf16's)."""
        seeds = tuple(self.rm.seeds)
        return seeds[: self.rm.control_seeds or len(seeds)] if arm in (NULL_ARM, NOISY_ARM) else seeds

    def ppo_rm_seeds(self, arm: str) -> tuple:
        """The reward-model seeds PPO trains `arm` against: the first ppo.rm_seeds of rm.seeds that the arm has."""
        first, has = self.rm.seeds[: self.ppo.rm_seeds or len(self.rm.seeds)], self.arm_seeds(arm)
        return tuple(s for s in first if s in has)

    def ppo_seed(self, rm_seed: int, run: int) -> int:
        """The PPO seed of run `run` against the reward models of seed `rm_seed` (the same in every arm)."""
        return rm_seed + PPO_RUN_STRIDE * run


# Kept out of the sections' reuse hash: settings that decide whether a stage runs, not what it computes (ppo.gate),
# and rm.labels, which enters the reward models' hash only when it is not the data's (stages.config_hash adds the
# judge), so that runs from before the setting existed stay reusable
UNHASHED = (("ppo", "gate"), ("rm", "labels"))

SECTIONS = {"data": DataSettings, "base": BaseSettings, "sft": SFTSettings, "rm": RMSettings, "ppo": PPOSettings,
            "eval": EvalSettings}

PROFILES = {
    # Runs everywhere, offline, in minutes on 2 CPU cores: two single-threaded jobs at once use both cores
    # about 1.85 times as well as one job on two threads (measured with these tiny models).
    "cpu": Profile(name="cpu", device="cpu", workers=2, threads=1),
    # The real experiment on an 8 GB GPU, with the seed's hyper-parameters.
    "rtx4060": Profile(
        name="rtx4060",
        device="auto",
        data=DataSettings(default_source="hub", subsets=("helpful-base", "harmless-base"),
                          test_fraction=0.05, max_prompt_tokens=384, max_response_tokens=128),
        base=BaseSettings(model="Qwen/Qwen2.5-0.5B"),
        # Sized to the card (issue 25; docs/time-budget.md): the best-of-n tax of every arm in about 3 hours and the
        # whole study in a day, predicted. Reward-model seeds and evaluation prompts are budget.size_design's choice
        # from the instrument's variance components; SFT and reward-model steps, PPO's 1 epoch (TRL's default is 4)
        # and 80 updates are what makes that fit. The study-sized design is the rtx4060_study profile.
        sft=SFTSettings(batch_size=2, accum=8, lr=2e-4, max_steps=500, warmup=0.03, dropout=0.05,
                        gradient_checkpointing=True, eval_pairs=500),
        rm=RMSettings(seeds=(0, 1, 2), control_seeds=0, batch_size=4, accum=4, lr=1e-4, max_steps=200,
                      lora_dropout=0.05, target_modules=ATTENTION, eval_pairs=1000, cpu_dtype="auto",
                      early_stopping=True, eval_every=50, patience=2, validation_pairs=200),
        ppo=PPOSettings(ppo_batch=64, mini_batch=16, micro_batch=4, rollout_chunk=8, ppo_epochs=1, ppo_lr=1.41e-5,
                        max_new=128, kl_coef=0.05, steps=80, target_modules=ATTENTION, rm_seeds=0, gate=True),
        # The judge: a public reward model of another family than the Qwen base (Llama-3.2-1B-Instruct based, 1.24 B
        # parameters, 2.5 GB in bf16; RewardBench v1 89.9 by its card and arXiv 2507.01352). The heldout judge, of
        # the bf16 arm's own recipe, favoured that arm (docs/design.md); eval.judge="heldout" still selects it.
        eval=EvalSettings(judge="Skywork/Skywork-Reward-V2-Llama-3.2-1B", prompts=128, samples=4, checkpoints=5,
                          checkpoint_samples=1, bon_pool=16),
    ),
}
# The study-sized design: the seed's hyper-parameters (SFT and reward models 1,000 steps, PPO 4 epochs x 100
# updates), 5 reward-model seeds and 256 evaluation prompts; several days on one RTX 4060 (docs/time-budget.md).
PROFILES["rtx4060_study"] = dataclasses.replace(
    PROFILES["rtx4060"], name="rtx4060_study",
    sft=dataclasses.replace(PROFILES["rtx4060"].sft, max_steps=1000),
    rm=dataclasses.replace(PROFILES["rtx4060"].rm, seeds=(0, 1, 2, 3, 4), max_steps=1000),
    ppo=dataclasses.replace(PROFILES["rtx4060"].ppo, ppo_epochs=4, steps=100),
    eval=dataclasses.replace(PROFILES["rtx4060"].eval, prompts=256))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_profile_name() -> tuple[str, str]:
    """The profile to use and why, as the notebooks print it."""
    env = os.environ.get("TINYRLHF_PROFILE")
    if env:
        return env, "TINYRLHF_PROFILE is set"
    if cuda_available():
        return "rtx4060", "CUDA is available and TINYRLHF_PROFILE is not set"
    # File checks and PATH only (no nvidia-smi run): this is asked by every notebook and stage.
    if nvidia_presence(query_smi=False)["present"]:
        return "cpu", ("no CUDA device usable by torch although an NVIDIA driver is present: see 00_Setup's "
                       "problems (TINYRLHF_PROFILE is not set)")
    return "cpu", "no CUDA device and TINYRLHF_PROFILE is not set"


def _check_value(section: str, name: str, value, ftype):
    where = f"{section}.{name}" if section else name
    origin = typing.get_origin(ftype) or ftype
    if ftype in ("int", int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    elif ftype in ("float", float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        kind = "a finite number"
    elif ftype in ("bool", bool):
        ok = isinstance(value, bool)
        kind = "true or false"
    elif ftype in ("str", str):
        ok = isinstance(value, str) and value != ""
        kind = "a non-empty string"
    elif ftype in ("tuple", tuple) or origin is tuple:
        ok = isinstance(value, (tuple, list)) and (len(value) > 0 or name in MAY_BE_EMPTY)
        kind = "a non-empty list"
    else:  # pragma: no cover - every field above has one of these types
        ok, kind = True, ""
    if not ok:
        raise ConfigError(f"{where} must be {kind}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in _RULES and name != "seed":
        if value < 0 or (value == 0 and name not in ("max_pairs", "kl_coef")):
            raise ConfigError(f"{where} must be > 0, got {value!r}")
    if name in _RULES:
        rule, text = _RULES[name]
        if not rule(value):
            raise ConfigError(f"{where} must be {text}, got {value!r}")


MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


def _check_seeds(where: str, seeds) -> None:
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED]
    if bad:
        raise ConfigError(f"{where} must be integers in [0, {MAX_SEED}], got {bad!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} must be distinct, got {list(seeds)!r}: a seed counted twice fakes agreement "
                          "and narrows the interval")


def _validate(p: Profile) -> None:
    if p.device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {p.device!r}")
    _check_value("", "seed", p.seed, int)
    _check_seeds("seed", [p.seed])
    _check_seeds("rm.seeds", list(p.rm.seeds))
    if max(p.rm.seeds) >= PPO_RUN_STRIDE:
        raise ConfigError(f"rm.seeds must be below {PPO_RUN_STRIDE} (a PPO seed is the reward-model seed + "
                          f"{PPO_RUN_STRIDE} x the run), got {list(p.rm.seeds)!r}")
    _check_value("", "workers", p.workers, int)
    _check_value("", "threads", p.threads, int)
    if p.report_to not in REPORTERS:
        raise ConfigError(f"report_to must be one of {', '.join(REPORTERS)}; got {p.report_to!r}")
    for sname, cls in SECTIONS.items():
        section = getattr(p, sname)
        for f in dataclasses.fields(cls):
            _check_value(sname, f.name, getattr(section, f.name), f.type)
    d = p.data
    for s in ("source", "default_source"):
        if getattr(d, s) not in DATA_SOURCES:
            raise ConfigError(f"data.{s} must be one of {', '.join(DATA_SOURCES)}; got {getattr(d, s)!r}")
    bad = [s for s in d.subsets if s not in HH_SUBSETS]
    if bad:
        raise ConfigError(f"data.subsets: unknown {bad}; allowed: {', '.join(HH_SUBSETS)}")
    bad = [x for x in p.rm.precisions if x not in PRECISIONS]
    if bad:
        raise ConfigError(f"rm.precisions: unknown {bad}; allowed: {', '.join(PRECISIONS)}")
    if p.rm.precisions[0] != "bf16" and "bf16" in p.rm.precisions:
        raise ConfigError("rm.precisions must list bf16 first: the other precisions are compared with it")
    if p.ppo.ppo_batch % p.ppo.mini_batch:
        raise ConfigError(f"ppo.ppo_batch ({p.ppo.ppo_batch}) must be a multiple of ppo.mini_batch ({p.ppo.mini_batch})")
    if p.ppo.mini_batch % p.ppo.micro_batch:
        raise ConfigError(f"ppo.mini_batch ({p.ppo.mini_batch}) must be a multiple of ppo.micro_batch "
                          f"({p.ppo.micro_batch})")
    if p.base.hidden_size % p.base.num_heads or p.base.num_heads % p.base.num_kv_heads:
        raise ConfigError(f"base.hidden_size ({p.base.hidden_size}) must be a multiple of base.num_heads "
                          f"({p.base.num_heads}), and that of base.num_kv_heads ({p.base.num_kv_heads})")
    if p.ppo.max_new < p.data.max_response_tokens:
        raise ConfigError(f"ppo.max_new ({p.ppo.max_new}) must be >= data.max_response_tokens "
                          f"({p.data.max_response_tokens}): shorter limits cut replies no reward model was trained on")
    _validate_scoring(p)
    if p.base.train_dtype not in TRAIN_DTYPES:
        raise ConfigError(f"base.train_dtype must be one of {', '.join(TRAIN_DTYPES)}; got {p.base.train_dtype!r}")
    if p.ppo.value_init not in VALUE_INITS:
        raise ConfigError(f"ppo.value_init must be one of {', '.join(VALUE_INITS)}; got {p.ppo.value_init!r}")
    if p.eval.checkpoints > p.ppo.steps:
        raise ConfigError(f"eval.checkpoints ({p.eval.checkpoints}) must be <= ppo.steps ({p.ppo.steps})")


def _validate_scoring(p: Profile) -> None:
    """Where and how reward models score."""
    if p.eval.score_device not in DEVICES:
        raise ConfigError(f"eval.score_device must be one of {', '.join(DEVICES)}; got {p.eval.score_device!r}")
    if p.eval.score_device == "cuda" and p.device == "cpu":
        raise ConfigError("eval.score_device='cuda' needs a GPU profile; with device='cpu' set eval.score_device='cpu'")
    if p.ppo.overlap_scoring not in ("auto", "on", "off"):
        raise ConfigError(f"ppo.overlap_scoring must be auto, on or off; got {p.ppo.overlap_scoring!r}")
    if p.ppo.rm_device not in ("cpu", "cuda"):
        raise ConfigError(f"ppo.rm_device must be cpu or cuda; got {p.ppo.rm_device!r}")
    if p.ppo.rm_device == "cuda" and p.device == "cpu":
        raise ConfigError("ppo.rm_device='cuda' needs the policy on a GPU; with device='cpu' set ppo.rm_device='cpu'")
    if p.rm.cpu_kernel not in CPU_KERNELS:
        raise ConfigError(f"rm.cpu_kernel must be one of {', '.join(CPU_KERNELS)}; got {p.rm.cpu_kernel!r}")
    if p.rm.cpu_dtype not in RM_CPU_DTYPES:
        raise ConfigError(f"rm.cpu_dtype must be one of {', '.join(RM_CPU_DTYPES)}; got {p.rm.cpu_dtype!r}")
    _validate_bon(p)
    if p.rm.labels not in RM_LABELS:
        raise ConfigError(f"rm.labels must be one of {', '.join(RM_LABELS)}; got {p.rm.labels!r}")
    if p.rm.labels == "judge" and p.eval.judge == "heldout":
        raise ConfigError("rm.labels='judge' needs a judge that exists before the reward models train: the gold rule "
                          "(synthetic data) or a public reward model (eval.judge = its hub id or path); the heldout "
                          "judge is itself a reward model trained on the data's labels")
    if p.rm.int8_cpu_matmul not in INT8_CPU_MATMULS:
        raise ConfigError(f"rm.int8_cpu_matmul must be one of {', '.join(INT8_CPU_MATMULS)}; "
                          f"got {p.rm.int8_cpu_matmul!r}")


def _validate_bon(p: Profile) -> None:
    """Best-of-n's headline n and bits sweep."""
    e = p.eval
    evaluated = {1 << k for k in range(e.bon_pool.bit_length()) if 1 << k <= e.bon_pool} | {e.bon_pool}
    if e.headline_n and e.headline_n not in evaluated:
        raise ConfigError(f"eval.headline_n ({e.headline_n}) must be one of the n best-of-n evaluates "
                          f"({', '.join(map(str, sorted(evaluated)))}), or 0 for n* (chosen on the same data)")
    bad = [k for k in e.serve_bits if k not in SERVE_BITS]
    if bad or len(set(e.serve_bits)) != len(e.serve_bits):
        raise ConfigError(f"eval.serve_bits must list distinct widths from {', '.join(map(str, SERVE_BITS))}; "
                          f"got {list(e.serve_bits)!r}")
    if e.serve_group not in (32, 64, 128):
        raise ConfigError(f"eval.serve_group must be 32, 64 or 128 (inputs per scale); got {e.serve_group!r}")
    if p.base.model == SCRATCH_MODEL and (p.base.hidden_size % e.serve_group or p.base.intermediate_size % e.serve_group):
        raise ConfigError(f"eval.serve_group ({e.serve_group}) must divide base.hidden_size ({p.base.hidden_size}) "
                          f"and base.intermediate_size ({p.base.intermediate_size})")


def _apply(profile: Profile, overrides: dict) -> Profile:
    grouped: dict[str, dict] = {}
    top: dict = {}
    for key, value in overrides.items():
        sname, _, fname = key.replace("__", ".").partition(".")
        if not fname:
            if sname not in TOP_LEVEL:
                raise ConfigError(
                    f"unknown setting {key!r}; top-level settings are {', '.join(TOP_LEVEL)}; "
                    f"sections are {', '.join(SECTIONS)} (write section.field or section__field)"
                )
            top[sname] = value
            continue
        if sname not in SECTIONS:
            raise ConfigError(f"unknown section {sname!r} in {key!r}; allowed: {', '.join(SECTIONS)}")
        names = [f.name for f in dataclasses.fields(SECTIONS[sname])]
        if fname not in names:
            raise ConfigError(f"unknown setting {key!r}; {sname} has: {', '.join(names)}")
        if isinstance(value, list):
            value = tuple(value)
        grouped.setdefault(sname, {})[fname] = value
    changes = {s: dataclasses.replace(getattr(profile, s), **kv) for s, kv in grouped.items()}
    return dataclasses.replace(profile, **top, **changes)


def get_profile(name: str | None = None, overrides: dict | None = None, **kw) -> Profile:
    """The named profile (or the default one) with overrides applied and validated."""
    if name is None:
        name, _ = default_profile_name()
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)} (set TINYRLHF_PROFILE)")
    merged: dict = {}
    env = os.environ.get("TINYRLHF_OVERRIDES")
    if env:
        try:
            parsed = json.loads(env)
        except json.JSONDecodeError as e:
            raise ConfigError(f'TINYRLHF_OVERRIDES is not valid JSON ({e}); example: {{"sft.max_steps": 10}}') from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"TINYRLHF_OVERRIDES must be a JSON object of settings, got {type(parsed).__name__} "
                              f'{env[:60]!r}; example: {{"sft.max_steps": 10}}')
        merged.update(parsed)
    for given in (overrides, kw):
        if given is not None and not isinstance(given, dict):
            raise ConfigError(f"overrides must be a dict of settings, got {type(given).__name__}")
    merged.update(overrides or {})
    merged.update(kw)
    profile = _resolve_seeds(_resolve_label_noise(_resolve_judge(_resolve_revisions(_apply(PROFILES[name], merged)))))
    _validate(profile)
    return profile


def _resolve_judge(p: Profile) -> Profile:
    """eval.judge="auto" made concrete from the data source, and a gold judge on data it has no rules for refused
    here, before any stage runs (it used to fail in 04, after 03 had trained every reward model)."""
    synthetic = resolve_source(p) == "synthetic"
    if p.eval.second_judge not in SECOND_JUDGES:
        raise ConfigError(f"eval.second_judge must be one of {', '.join(SECOND_JUDGES)}; got {p.eval.second_judge!r}")
    if p.eval.second_judge == "same-recipe" and not synthetic:
        raise ConfigError("eval.second_judge='same-recipe' trains its judge on freshly generated pairs, which only the "
                          f"synthetic data has, but the data source is {resolve_source(p)!r}: set it to 'auto' or "
                          "'none' (on real data eval.judge='heldout' is the same-recipe judge)")
    if p.eval.second_judge == "auto":
        second = "same-recipe" if synthetic else "none"
        p = dataclasses.replace(p, eval=dataclasses.replace(p.eval, second_judge=second))
    if p.eval.judge == "auto":
        return dataclasses.replace(p, eval=dataclasses.replace(p.eval, judge="gold" if synthetic else "heldout"))
    if p.eval.judge == "gold" and not synthetic:
        raise ConfigError(f"eval.judge='gold' knows only the synthetic data's rules, but the data source is "
                          f"{resolve_source(p)!r}: set eval.judge to 'auto' or 'heldout' (a reward model trained on the "
                          f"half of the pairs no arm sees), or to a reward model's path or hub id")
    return p


SEEDS_RULES = ("fixed", "auto")


def _resolve_seeds(p: Profile) -> Profile:
    """rm.seeds="auto" made concrete: the candidate seeds 0 .. rm.seeds_max - 1, to be used until resolved."""
    r = p.rm
    if r.seeds == "auto":
        if not 2 <= r.seeds_min <= r.seeds_max:
            raise ConfigError(f"rm.seeds='auto' needs 2 <= rm.seeds_min <= rm.seeds_max, got {r.seeds_min} and "
                              f"{r.seeds_max}: an interval over seeds needs two of them")
        return dataclasses.replace(p, rm=dataclasses.replace(r, seeds=tuple(range(r.seeds_max)), seeds_rule="auto"))
    if isinstance(r.seeds, str):
        raise ConfigError(f"rm.seeds must be a list of seeds or 'auto', got {r.seeds!r}")
    if r.seeds_rule not in SEEDS_RULES:
        raise ConfigError(f"rm.seeds_rule is set by rm.seeds ('auto' or a list), got {r.seeds_rule!r}")
    return p


def _resolve_label_noise(p: Profile) -> Profile:
    """rm.label_noise_on="auto" made concrete from the data source; a category refused on data without categories."""
    synthetic, on = resolve_source(p) == "synthetic", p.rm.label_noise_on
    if on not in LABEL_NOISE_ON:
        raise ConfigError(f"rm.label_noise_on={on!r} is not one of {', '.join(LABEL_NOISE_ON)}")
    if on == "auto":
        return dataclasses.replace(p, rm=dataclasses.replace(p.rm, label_noise_on="rude" if synthetic else "any"))
    if on != "any" and not synthetic:
        raise ConfigError(f"rm.label_noise_on={on!r} is a category of the synthetic data, but the data source is "
                          f"{resolve_source(p)!r}, whose pairs have none: set rm.label_noise_on to 'auto' or 'any'")
    return p


def _resolve_revisions(p: Profile) -> Profile:
    """"auto" revisions made concrete, so the manifest and the stage hashes hold the commit itself."""
    base = p.base.revision if p.base.revision != "auto" else PINNED_REVISIONS.get(p.base.model, LATEST)
    data = p.data.revision if p.data.revision != "auto" else PINNED_REVISIONS.get(p.data.hub_id, LATEST)
    judge = p.eval.judge_revision  # only a judge named by id or path loads anything
    if judge == "auto" and p.eval.judge not in JUDGES:
        judge = PINNED_REVISIONS.get(p.eval.judge, FIRST_DOWNLOAD)
    return dataclasses.replace(p, base=dataclasses.replace(p.base, revision=base),
                               data=dataclasses.replace(p.data, revision=data),
                               eval=dataclasses.replace(p.eval, judge_revision=judge))


@dataclass(frozen=True)
class Paths:
    """Where every artifact goes: under TINYRLHF_WORKDIR (default: the repository root).

    The one owner of artifact locations: stages, notebooks and tests ask here instead of joining paths.
    """

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def figures(self) -> Path:
        return self.root / "results" / "figures"

    @property
    def executed(self) -> Path:
        return self.root / "executed"

    def data_file(self, name: str) -> Path:
        """The prepared data: "train" and "test" preference pairs, "sft" prompt/completion rows."""
        return self.data / DATA_FILES[name]

    @property
    def base(self) -> Path:
        return self.models / "base"

    @property
    def sft(self) -> Path:
        return self.models / "sft"

    @property
    def sft_adapter(self) -> Path:
        return self.sft / "adapter"

    @property
    def sft_merged(self) -> Path:
        return self.sft / "merged"

    def rm(self, arm: str, seed: int | None = None) -> Path:
        """A reward model: an arm's for one reward-model seed, or (seed None) one of its own, like the judge."""
        return self.models / "rm" / arm / (f"seed{seed}" if seed is not None else "")

    @property
    def hub_pins(self) -> Path:
        """The hub commits pinned at their first download in this workdir (config.FIRST_DOWNLOAD), by hub id."""
        return self.models / "hub-pins.json"

    @property
    def bon_pool(self) -> Path:
        """Best-of-n's candidates, their gold scores and every reward model's scores (JSON lines)."""
        return self.models / "bon" / "pool.jsonl"

    def policy(self, arm: str, seed: int) -> Path:
        """A PPO policy: `seed` is its PPO seed (profile.ppo_seed)."""
        return self.models / f"ppo_policy_{arm}" / f"seed{seed}"

    def result(self, kind: str) -> Path:
        """A stage's result file: kind "data_stats", "sft", "rm", "ppo" or "environment"."""
        return self.results / RESULT_FILES[kind]

    def relative(self, path) -> str:
        """`path` relative to the workdir (as results record artifacts, so a moved workdir still finds them)."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def make(self) -> Paths:
        try:
            for p in (self.data, self.models, self.results, self.figures):
                p.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise PermissionError("not writable")
        except OSError as e:
            raise ConfigError(f"the workdir {self.root} cannot hold the pipeline's folders ({e.strerror or e}): set "
                              "TINYRLHF_WORKDIR (or --workdir) to a writable folder") from None
        return self


DATA_FILES = {"train": "train_prefs.jsonl", "test": "test_prefs.jsonl", "sft": "sft_train.jsonl"}
RESULT_FILES = {"data_stats": "data_stats.json", "sft": "sft_results.json", "rm": "rm_results.json",
                "bon": "bon_results.json", "ppo": "ppo_experiment_results.json", "environment": "environment.json"}


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def get_paths(workdir: str | os.PathLike | None = None) -> Paths:
    root = workdir or os.environ.get("TINYRLHF_WORKDIR") or repo_root()
    return Paths(Path(root).expanduser().resolve())


def hh_dir() -> Path | None:
    v = os.environ.get("TINYRLHF_HH_DIR")
    return Path(v).expanduser() if v else None


def bon_sample_chunk(profile: Profile) -> int:
    """Candidates of the best-of-n pool generated at once: PPO's rollout chunk (sampled as PPO samples), at least 8."""
    return max(profile.ppo.rollout_chunk, 8)


def resolve_source(profile: Profile) -> str:
    src = profile.data.source
    if src == "auto":
        return "local" if hh_dir() else profile.data.default_source
    return src


def resolve_device(profile: Profile) -> str:
    if profile.device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if profile.device == "cuda" and not cuda_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is visible; use device='cpu' or 'auto'")
    return profile.device


def score_device(profile: Profile) -> str:
    """Where reward models score with no policy training beside them (EvalSettings.score_device)."""
    if profile.eval.score_device == "auto":
        return resolve_device(profile)
    if profile.eval.score_device == "cuda" and not cuda_available():
        raise ConfigError("eval.score_device='cuda' but no CUDA device is visible; set eval.score_device='cpu' or "
                          "'auto'")
    return profile.eval.score_device
