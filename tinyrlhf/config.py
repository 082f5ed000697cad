"""Profiles: named, validated sets of settings for every stage.

`get_profile()` picks the profile from ``TINYRLHF_PROFILE`` (default: ``rtx4060`` when CUDA is available,
else ``cpu``), applies overrides (keyword ``section__field=value``, or ``TINYRLHF_OVERRIDES`` holding a JSON
object of ``"section.field": value``) and validates every value, failing at once with what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

PRECISIONS = ("bf16", "int8", "int4")
DATA_SOURCES = ("auto", "synthetic", "hub", "local")
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled", "red-team-attempts")
DEVICES = ("auto", "cpu", "cuda")
REPORTERS = ("none", "tensorboard", "wandb")  # where the trainers also log (TrainingArguments.report_to)
TOP_LEVEL = ("seed", "device", "report_to")
SCRATCH_MODEL = "scratch-gpt2"  # the cpu profile's base model, built and pre-trained by base_model.py


class ConfigError(ValueError):
    """A profile name or setting that is not allowed; the message says what is."""


def _positive(v):
    return v > 0


def _share(v):
    return 0.0 < v < 1.0


def _nonneg(v):
    return v >= 0


# Range checks per field name; a field without one is only type-checked.
_RULES = {
    "test_fraction": (_share, "a number strictly between 0 and 1"),
    "max_skipped_share": (lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1"),
    "dropout": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "lora_dropout": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "warmup": (lambda v: 0.0 <= v < 1.0, "a warm-up ratio in [0, 1)"),
    "clip": (_share, "a clip range strictly between 0 and 1"),
    "kl_coef": (_nonneg, "a number >= 0"),
    "temperature": (_positive, "a number > 0"),
    "n_embd": (lambda v: v > 0 and v % 64 == 0, "a positive multiple of 64 (bitsandbytes 4-bit blocks)"),
}


@dataclass(frozen=True)
class DataSettings:
    source: str = "auto"  # auto: `local` when TINYRLHF_HH_DIR is set, else synthetic (cpu) or hub (GPU)
    default_source: str = "synthetic"
    subsets: tuple = ("harmless-base",)
    synthetic_pairs: int = 1500
    max_pairs: int = 0  # 0: keep all
    test_fraction: float = 0.1
    max_prompt_tokens: int = 96
    max_response_tokens: int = 48
    max_skipped_share: float = 0.05  # malformed records above this share stop the run


@dataclass(frozen=True)
class BaseSettings:
    model: str = SCRATCH_MODEL  # hub id or local path; SCRATCH_MODEL builds a tiny GPT-2 here
    vocab_size: int = 768
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    pretrain_steps: int = 100
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    trust_remote_code: bool = False


@dataclass(frozen=True)
class SFTSettings:
    batch_size: int = 16
    accum: int = 1
    lr: float = 2e-3
    epochs: float = 1.0
    max_steps: int = 40
    warmup: float = 0.1
    dropout: float = 0.05
    lora_r: int = 16
    lora_alpha: int = 32
    target_modules: tuple = ("c_attn", "c_proj", "c_fc")
    gradient_checkpointing: bool = False
    eval_pairs: int = 200
    sample_prompts: int = 4


@dataclass(frozen=True)
class RMSettings:
    precisions: tuple = PRECISIONS
    batch_size: int = 16
    accum: int = 1
    lr: float = 1e-3  # measured: at 2e-3 the int8 model's training loss climbed back above chance late in training
    epochs: float = 1.0
    max_steps: int = 60
    warmup: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: tuple = ("c_attn", "c_proj", "c_fc")
    double_quant: bool = True
    eval_pairs: int = 300


@dataclass(frozen=True)
class PPOSettings:
    seeds: tuple = (0, 1)
    # TRL 1.12 collects ppo_batch rollouts, then per PPO epoch takes ONE optimizer step, accumulating gradients
    # over ppo_batch / mini_batch forward/backward passes (its only consistent setting is num_mini_batches=1).
    ppo_batch: int = 16  # rollouts per PPO update
    mini_batch: int = 8  # sequences per forward/backward pass (also the rollout forward chunk)
    ppo_epochs: int = 4
    ppo_lr: float = 1e-3
    max_new: int = 24
    clip: float = 0.2
    kl_coef: float = 0.2  # measured: 0.05 with lr 2e-3 reached KL 14 and degenerate text (reward hacking)
    steps: int = 12  # PPO updates per run
    temperature: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    target_modules: tuple = ("c_attn", "c_proj", "c_fc")
    eval_prompts: int = 64
    sample_responses: int = 3


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int = 0
    device: str = "auto"
    report_to: str = "none"
    data: DataSettings = field(default_factory=DataSettings)
    base: BaseSettings = field(default_factory=BaseSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    rm: RMSettings = field(default_factory=RMSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Short hash of the named sections (plus seed): a stage's outputs are reused only when it matches."""
        d = self.to_dict()
        payload = {s: d[s] for s in sections} | {"seed": self.seed}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS = {"data": DataSettings, "base": BaseSettings, "sft": SFTSettings, "rm": RMSettings, "ppo": PPOSettings}

PROFILES = {
    # Runs everywhere, offline, in minutes on 2 CPU cores.
    "cpu": Profile(name="cpu", device="cpu"),
    # The real experiment on an 8 GB GPU, with the seed's hyper-parameters.
    "rtx4060": Profile(
        name="rtx4060",
        device="auto",
        data=DataSettings(default_source="hub", subsets=("helpful-base", "harmless-base"),
                          test_fraction=0.05, max_prompt_tokens=384, max_response_tokens=128),
        base=BaseSettings(model="Qwen/Qwen2.5-0.5B"),
        sft=SFTSettings(batch_size=2, accum=8, lr=2e-4, max_steps=1000, warmup=0.03, dropout=0.05,
                        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), gradient_checkpointing=True,
                        eval_pairs=500),
        rm=RMSettings(batch_size=4, accum=4, lr=1e-4, max_steps=1000, lora_dropout=0.05,
                      target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), eval_pairs=1000),
        ppo=PPOSettings(seeds=(0, 1, 2), ppo_batch=64, mini_batch=4, ppo_epochs=4, ppo_lr=1.41e-5,
                        max_new=128, kl_coef=0.05, steps=100, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                        eval_prompts=256),
    ),
}


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
    return "cpu", "no CUDA device and TINYRLHF_PROFILE is not set"


def _check_value(section: str, name: str, value, ftype):
    where = f"{section}.{name}" if section else name
    origin = typing.get_origin(ftype) or ftype
    if ftype in ("int", int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    elif ftype in ("float", float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        kind = "a number"
    elif ftype in ("bool", bool):
        ok = isinstance(value, bool)
        kind = "true or false"
    elif ftype in ("str", str):
        ok = isinstance(value, str) and value != ""
        kind = "a non-empty string"
    elif ftype in ("tuple", tuple) or origin is tuple:
        ok = isinstance(value, (tuple, list)) and len(value) > 0
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


def _validate(p: Profile) -> None:
    if p.device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {p.device!r}")
    _check_value("", "seed", p.seed, int)
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
    if p.base.n_embd % p.base.n_head:
        raise ConfigError(f"base.n_embd ({p.base.n_embd}) must be a multiple of base.n_head ({p.base.n_head})")


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
            merged.update(json.loads(env))
        except json.JSONDecodeError as e:
            raise ConfigError(f'TINYRLHF_OVERRIDES is not valid JSON ({e}); example: {{"sft.max_steps": 10}}') from None
    merged.update(overrides or {})
    merged.update(kw)
    profile = _apply(PROFILES[name], merged)
    _validate(profile)
    return profile


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

    def rm(self, precision: str) -> Path:
        return self.models / "rm" / precision

    def policy(self, precision: str, seed: int) -> Path:
        return self.models / f"ppo_policy_{precision}" / f"seed{seed}"

    def result(self, kind: str) -> Path:
        """A stage's result file: kind "data_stats", "sft", "rm", "ppo" or "environment"."""
        return self.results / RESULT_FILES[kind]

    def make(self) -> "Paths":
        for p in (self.data, self.models, self.results, self.figures):
            p.mkdir(parents=True, exist_ok=True)
        return self


DATA_FILES = {"train": "train_prefs.jsonl", "test": "test_prefs.jsonl", "sft": "sft_train.jsonl"}
RESULT_FILES = {"data_stats": "data_stats.json", "sft": "sft_results.json", "rm": "rm_results.json",
                "ppo": "ppo_experiment_results.json", "environment": "environment.json"}


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def get_paths(workdir: str | os.PathLike | None = None) -> Paths:
    root = workdir or os.environ.get("TINYRLHF_WORKDIR") or repo_root()
    return Paths(Path(root).expanduser().resolve())


def hh_dir() -> Path | None:
    v = os.environ.get("TINYRLHF_HH_DIR")
    return Path(v).expanduser() if v else None


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
