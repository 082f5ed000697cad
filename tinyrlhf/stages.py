"""The pipeline's stages, each read top to bottom in one place: data -> sft -> rm -> bon -> ppo (STAGES).

Every stage goes through the one cycle in `cycle()`: the hash of the settings it depends on, reuse of a finished
run with the same hash, the computation, a manifest, validation against the result schema, and an atomic write of
its result file. The notebooks, the command line (`tinyrlhf run`) and the tests call the `run_*` functions here;
the modules they call (data, base_model, sft, reward, ppo, evaluate) are libraries that take explicit arguments and
never import this module.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import base_model, bon, data, distributed, evaluate, gate, lineage, schema, sequential
from .config import (
    NOISY_ARM,
    NULL_ARM,
    NULL_SEED_OFFSET,
    SERVED_PREFIX,
    Paths,
    Profile,
    bon_sample_chunk,
    hh_dir,
    resolve_device,
    resolve_source,
    score_device,
)
from .evaluate import experiment_result
from .kernels import ARITHMETIC
from .jobs import run_jobs
from .memory import measured_vs_estimate
from .ppo import PPOError, train_ppo
from .results import (
    MemoryMeter,
    atomic_folder,
    atomic_write_json,
    atomic_write_jsonl,
    current_rss_bytes,
    data_source_of,
    manifest,
    read_json,
    to_json_ready,
    workdir_lock,
)
from .reward import (
    CPURewardModel,
    RewardModelError,
    compare_cpu_kernels,
    evaluate_reward_model,
    load_for_scoring,
    seed_summary,
    train_reward_model,
)
from .runtime import collected, free_memory, progress_bar, progress_callback
from .sft import generate, heldout_loss, train_sft
from .stats import mcnemar, spearman, wilson_ci
from .synthetic import GOLD_RULE, pretraining_corpus

log = logging.getLogger(__name__)

RM_RECORD = "record.json"  # a finished reward model's evaluation record, beside its adapter: what a rerun keeps
JUDGE_ARM = "judge"  # the heldout judge's reward model (eval.judge = "heldout"), trained on the other half
# eval.second_judge = "same-recipe": a bf16 reward model of the bf16 arm's recipe trained on freshly generated pairs
SECOND_JUDGE_ARM = "same-recipe-judge"
FRESH_DATA_SEED = 7919  # added to the profile's seed: the fresh pairs' generator seed, not the training data's


@dataclass(frozen=True)
class Stage:
    name: str  # as the command line and the manifests call it
    kind: str  # its result file (Paths.result) and schema (schema.validate)
    sections: tuple  # the settings its outputs depend on: reused only while these are unchanged
    notebook: str
    does: str


DATA = Stage("data", "data_stats", ("data", "base"), "01_Data_Preparation",
             "parse, validate, de-duplicate, split and length-filter the preference data")
SFT = Stage("sft", "sft", ("data", "base", "sft"), "02_SFT_Finetuning",
            "build the base model (cpu profile), LoRA SFT, held-out loss before/after")
RM = Stage("rm", "rm", ("data", "base", "sft", "rm"), "03_Reward_Modeling",
           "a reward model per arm (precisions, null and noisy controls) and reward-model seed, evaluated on "
           "held-out pairs")
# best-of-n samples and scores its pool as PPO's rollouts are (ppo.max_new, temperature, missing_eos_penalty)
BON = Stage("bon", "bon", ("data", "base", "sft", "rm", "ppo", "eval"), "03_Reward_Modeling",
            "best-of-n: one candidate pool from the SFT policy, judged once, ranked by every reward model")
PPO = Stage("ppo", "ppo", ("data", "base", "sft", "rm", "ppo", "eval"), "04_PPO_Alignment",
            "PPO against each reward model (every arm, every reward-model seed), evaluation, the quantization tax")


BY_KIND = {st.kind: st for st in (DATA, SFT, RM, BON, PPO)}


class StaleInputError(RuntimeError):
    """An upstream stage is missing, failed or out of date; the message names it and what to rerun."""


# ------------------------------------------------------------------------------------------------- the cycle
def config_hash(stage: Stage, profile: Profile) -> str:
    """The settings a stage's outputs depend on, plus what is not a setting: the data source (and its folder),
    and for the reward models whether a heldout judge takes half of the pairs."""
    extra = ""
    if stage is DATA:
        source = resolve_source(profile)
        extra = f":{source}:{hh_dir() if source == 'local' else ''}"
    elif stage is RM and profile.eval.judge == "heldout":
        extra = ":halves"  # the arms train on half of the pairs, the judge on the other half
    elif stage is RM and profile.rm.labels == "judge":  # the judge wrote the labels: another judge, other models
        extra = f":labels:{profile.eval.judge}@{profile.eval.judge_revision}"
    if stage is RM and profile.eval.second_judge == "same-recipe":
        extra += ":second-judge"  # one more model, on pairs of its own
    return profile.section_hash(*stage.sections) + extra


def _failed_parts(result: dict) -> list[str]:
    return [name for name, rec in (result.get("arms") or {}).items() if rec.get("status") != "ok"]


def _not_reusable(result_path: Path, expected_hash: str, inputs: dict, root: Path) -> str | None:
    """Why the previous result cannot be reused, or None when it can."""
    if not result_path.exists():
        return "it has not run yet"
    try:
        result = read_json(result_path)
    except (ValueError, OSError) as e:
        return f"its result file is unreadable ({type(e).__name__})"
    if result.get("config_hash") != expected_hash:
        return "its settings changed"
    failed = _failed_parts(result)
    if failed:
        return f"{', '.join(failed)} did not finish last time"
    return lineage.stale_reason(result, root, inputs)


def upstream_inputs(stage: Stage, profile: Profile, paths: Paths, verified: dict | None = None) -> dict:
    """The fingerprints of the upstream results a stage reads, after checking each is there, current and intact
    (recursively): a stage never builds on a stale or broken input. `verified` (kind -> fingerprint) holds the
    results already checked in this walk, so a result two stages below (the SFT model under PPO and under the reward
    models) is hashed once."""
    verified = {} if verified is None else verified
    for kind in lineage.UPSTREAM[stage.kind]:
        if kind in verified:
            continue
        up = BY_KIND[kind]
        where = f"rerun {up.notebook} (or `tinyrlhf run {up.name}`)"
        if not paths.result(kind).exists():
            raise StaleInputError(f"{stage.name} needs the {up.name} stage's results: {where} first")
        reason = _not_reusable(paths.result(kind), config_hash(up, profile),
                               upstream_inputs(up, profile, paths, verified), paths.root)
        # PPO records a failed, missing or broken reward model as that arm's failure and runs the others
        if reason and not (kind == "rm" and (reason.endswith("did not finish last time")
                                             or reason.startswith("its output "))):
            raise StaleInputError(f"{stage.name} cannot use the {up.name} stage's results: {reason}; {where}")
        verified[kind] = lineage.fingerprint_of(read_json(paths.result(kind)))
    return {kind: verified[kind] for kind in lineage.UPSTREAM[stage.kind]}


def cycle(stage: Stage, profile: Profile, paths: Paths, *, force: bool, compute: Callable[[], tuple[dict, dict]],
          outputs=()) -> dict:
    """upstream check -> config hash -> reuse -> compute -> lineage + manifest -> schema validation -> atomic write.

    `outputs` are the files and folders the stage writes (digested into its lineage). `compute()` returns (result,
    manifest keywords: data_source, seeds, timings, peak_memory). The returned dict is what was written, plus
    "reused" (not written). One stage at a time per workdir (a lock).
    """
    paths.make()
    # Under a launcher the main process holds the lock and writes; every rank computes (trains) in step.
    with workdir_lock(paths.root) if distributed.is_main() else contextlib.nullcontext():
        inputs = upstream_inputs(stage, profile, paths)
        expected = config_hash(stage, profile)
        result_path = paths.result(stage.kind)
        reason = "forced" if force else _not_reusable(result_path, expected, inputs, paths.root)
        if reason is None:
            log.info("%s: reusing %s (same settings and inputs, outputs verified)", stage.name, result_path)
            return read_json(result_path) | {"reused": True}
        log.info("%s: %s (%s)", stage.name, stage.does, reason)
        t0 = time.perf_counter()
        with disk_full_said_plainly(paths.root):
            computed = compute() if distributed.is_main() or stage is not DATA else None
        if not distributed.is_main():
            distributed.barrier()  # the main process writes the result; then every rank reads the same one
            return read_json(result_path) | {"reused": False}
        result, meta = computed
        meta["timings"] = {"stage_seconds": time.perf_counter() - t0} | meta.get("timings", {})
        result = to_json_ready({"config_hash": expected} | result
                               | {"lineage": lineage.record(expected, inputs, paths.root, outputs),
                                  "manifest": manifest(profile, stage.name, **meta)})
        schema.validate(result, stage.kind, source=result_path)
        atomic_write_json(result_path, result)
    distributed.barrier()
    return result | {"reused": False}


class DiskFullError(RuntimeError):
    """The disk filled up while a stage wrote; nothing half-written is reused (outputs are verified)."""


@contextlib.contextmanager
def disk_full_said_plainly(root: Path):
    """A full disk reaches us as OSError 28 or as safetensors' "os error 28": one sentence instead of either."""
    try:
        yield
    except Exception as e:
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "os error 28" in str(e).lower():
            raise DiskFullError(f"the disk holding {root} is full: free space (or set TINYRLHF_WORKDIR to another "
                                "disk) and rerun; nothing half-written will be reused") from None
        raise


def failure(e: BaseException, lower: str | None = None) -> dict:
    """How a precision or seed that failed is recorded; the others go on. Under a launcher the failure is raised
    instead: a rank that went on alone would wait forever in the next collective, while a raised error ends the
    launch (torchrun stops the other ranks)."""
    if distributed.launched():
        raise e
    # Memory is freed by the caller after its except block: here the traceback still holds the failed run's frames
    # (its trainer and models), so nothing could be collected yet.
    return {"status": "failed", "reason": failure_reason(e, lower), "traceback": traceback.format_exc()[-2000:]}


def failure_reason(e: BaseException, lower: str | None = None) -> str:
    """One sentence for a failed run; for a CUDA out-of-memory error, the card's free memory (a desktop card also
    drives the display) and `lower`, the setting of that kind of run to lower."""
    import torch

    reason = f"{type(e).__name__}: {e}"
    if isinstance(e, torch.cuda.OutOfMemoryError):
        free = torch.cuda.mem_get_info()[0] / 2**30 if torch.cuda.is_available() else None
        where = "" if free is None else f" ({free:.1f} GiB free on the card at the failure)"
        reason = f"CUDA out of memory{where}: lower {lower or 'the batch sizes'}; {e}"
    return reason[:500]


def context_needed(profile: Profile) -> int:
    """Positions a prompt and its longest reply take: generation runs to ppo.max_new."""
    return profile.data.max_prompt_tokens + max(profile.ppo.max_new, profile.data.max_response_tokens)


def tokenizer_path(profile: Profile, paths: Paths) -> str:
    """The base tokenizer: trained by the data stage on `cpu`, else the base model's own (at its pinned commit)."""
    return str(paths.base) if base_model.is_scratch(profile) else base_model.base_model_path(profile, paths)


# ---------------------------------------------------------------------------------------------------- 01 data
def run_data(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """01: parse, validate, de-duplicate, split by prompt and length-filter; the three data files and stats."""
    source = resolve_source(profile)
    outputs = [paths.data_file(k) for k in ("train", "test", "sft")]
    if base_model.is_scratch(profile):
        outputs.append(paths.base / "tokenizer.json")  # trained here, so part of this stage's output
    return cycle(DATA, profile, paths, force=force, outputs=outputs,
                 compute=lambda: _prepare_data(profile, paths, source))


def _prepare_data(profile: Profile, paths: Paths, source: str):
    d = profile.data
    ######## Read and parse ########
    raw = data.load_source(source, subsets=d.subsets, synthetic_pairs=d.synthetic_pairs,
                           off_topic_share=d.off_topic_share, seed=profile.seed, hh_dir=hh_dir(), hub_id=d.hub_id,
                           revision=d.revision)
    pairs, report = data.parse_source(raw, d.max_skipped_share)
    if source == "synthetic":
        pairs = data.with_categories(pairs)

    ######## De-duplicate, cap, split by prompt ########
    pairs, n_dup = data.deduplicate(pairs)
    report.skipped["duplicate"] += n_dup
    pairs, capped_from = data.cap(pairs, d.max_pairs, profile.seed)
    train, test = data.split_by_prompt(pairs, d.test_fraction, profile.seed)

    ######## Tokenizer (trained here on cpu), then the length filter ########
    if base_model.is_scratch(profile):
        tokenizer = base_model.train_tokenizer([p.prompt + " " + r for p in train for r in (p.chosen, p.rejected)],
                                               profile.base.vocab_size)
        tokenizer.save_pretrained(paths.base)
    else:
        tokenizer = base_model.load_tokenizer(tokenizer_path(profile, paths),
                                              trust_remote_code=profile.base.trust_remote_code)
    kept, lengths = data.filter_by_length({"train": train, "test": test}, tokenizer, d.max_prompt_tokens,
                                          d.max_response_tokens, report)
    if not kept["train"] or not kept["test"]:
        raise data.DataError(f"after filtering, train has {len(kept['train'])} and test {len(kept['test'])} "
                             "pairs; raise data.max_prompt_tokens / data.max_response_tokens or supply more data")

    ######## Write ########
    data.write_prepared(kept["train"], kept["test"], train_path=paths.data_file("train"),
                        test_path=paths.data_file("test"), sft_path=paths.data_file("sft"))
    stats = {"source": raw.name, "sha256": raw.sha256, "missing_subsets": raw.missing,
             "rows_read": report.rows_read, "parsed": report.rows_read - report.malformed,
             "kept": len(kept["train"]) + len(kept["test"]), "train": len(kept["train"]), "test": len(kept["test"]),
             "capped_from": capped_from,
             "skipped": {r: report.skipped.get(r, 0) for r in data.MALFORMED + data.FILTERED},
             "skipped_examples": report.examples,
             "token_lengths": {k: data.percentiles(getattr(lengths, k)) for k in ("prompt", "chosen", "rejected")},
             "tokenizer": profile.base.model}
    return stats, {"data_source": {"source": raw.name, "sha256": raw.sha256}}


def prepared_lengths(profile: Profile, paths: Paths) -> dict:
    """Token lengths of the written train and test pairs, for 01's histogram."""
    tok = base_model.load_tokenizer(tokenizer_path(profile, paths), trust_remote_code=profile.base.trust_remote_code)
    return {name: asdict(data.token_lengths(data.read_pairs(paths.data_file(name)), tok)) for name in ("train", "test")}


# ----------------------------------------------------------------------------------------------------- 02 SFT
def run_sft(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """02: the base model (built on `cpu`), held-out loss and generations before and after LoRA SFT."""
    built = [paths.base] if base_model.is_scratch(profile) else []
    return cycle(SFT, profile, paths, force=force, outputs=[*built, paths.sft_adapter, paths.sft_merged],
                 compute=lambda: _fine_tune(profile, paths, force, progress))


def _fine_tune(profile: Profile, paths: Paths, force: bool, progress: bool):
    s, trust, device = profile.sft, profile.base.trust_remote_code, resolve_device(profile)
    ######## Base model (pre-trained here on the cpu profile) ########
    base_summary = build_base_model(profile, paths, force=force, progress=progress)
    init_path = base_model.base_model_path(profile, paths)  # the tokenizer's folder too (tokenizer_path)
    base_model.check_context(init_path, context_needed(profile), trust_remote_code=trust)
    tokenizer = base_model.load_tokenizer(init_path, trust_remote_code=trust)
    test_pairs = data.read_pairs(paths.data_file("test"))[: s.eval_pairs]
    prompts = [p.prompt for p in test_pairs[: s.sample_prompts]]
    max_new = profile.data.max_response_tokens

    ######## Before: held-out loss and greedy replies of the base model ########
    if distributed.is_main():
        before, before_text = _loss_and_replies(init_path, tokenizer, test_pairs, prompts, max_new, trust, device)

    ######## LoRA SFT on prompt + chosen reply ########
    with atomic_folder(paths.sft) as written:  # renamed into place only when complete
        run = train_sft(paths.data_file("sft"), out_dir=written, init_path=init_path, tokenizer=tokenizer,
                        batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, accum=s.accum, warmup=s.warmup,
                        dropout=s.dropout, max_steps=s.max_steps, lora_r=s.lora_r, lora_alpha=s.lora_alpha,
                        target_modules=s.target_modules,
                        max_length=profile.data.max_prompt_tokens + profile.data.max_response_tokens + 1,
                        seed=profile.seed, profile=profile, report=progress_bar("SFT (LoRA)", progress))
    if not distributed.is_main():
        return None  # evaluation and the result are the main process's

    ######## After: held-out loss, greedy replies, and sampled replies as PPO will sample them ########
    with MemoryMeter() as evaluation:  # the stage's peak is the larger of training and evaluation (memory.py)
        after, after_text = _loss_and_replies(paths.sft_merged, tokenizer, test_pairs, prompts, max_new, trust,
                                              device)
        quality = sft_reply_quality(profile, paths, tokenizer, progress)
    peak = max(run["peak_memory"], evaluation.result, key=lambda r: r["peak_bytes"])
    result = {
        "base_model": profile.base.model,
        "base_pretraining": {k: v for k, v in base_summary.items() if k != "config_hash"},
        "before": before, "after": after, "loss_drop": before["loss"] - after["loss"],
        "loss_curve": run["loss_curve"], "train_seconds": run["train_seconds"],
        "peak_memory_bytes": peak["peak_bytes"], "memory": measured_vs_estimate(profile, "sft", peak),
        "trainable_parameters": run["trainable_parameters"], "total_parameters": run["total_parameters"],
        "generations": [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before_text, after_text)],
        "reply_quality": quality,
        "artifacts": {"adapter": paths.relative(paths.sft_adapter), "merged": paths.relative(paths.sft_merged)},
    } | ({"ranks": run["ranks"]} if distributed.launched() else {})
    return result, {"data_source": data_source_of(paths), "timings": {"train_seconds": run["train_seconds"]},
                    "peak_memory": run["peak_memory"]}


def sft_reply_quality(profile: Profile, paths: Paths, tokenizer, progress: bool = False) -> dict:
    """The SFT policy's sampled replies to the evaluation prompts: how many end with EOS within ppo.max_new, their
    length, and their gold reward when the data is synthetic."""
    p, e = profile.ppo, profile.eval
    policy = base_model.load_causal_lm(paths.sft_merged, trust_remote_code=profile.base.trust_remote_code,
                                       device=resolve_device(profile))
    prompts = evaluate.eval_prompts([x.prompt for x in data.read_pairs(paths.data_file("test"))], e.prompts,
                                    profile.seed)
    rollouts = evaluate.sample(policy, tokenizer, prompts, samples=e.samples, max_new=p.max_new,
                               temperature=p.temperature, seed=profile.seed, report=progress_bar(
                                   f"Sampling the SFT policy ({len(prompts)} prompts x {e.samples})", progress))
    gold = (evaluate.gold_scores(rollouts, missing_eos_penalty=p.missing_eos_penalty)
            if resolve_source(profile) == "synthetic" else None)
    del policy
    free_memory()
    return {"replies": len(rollouts.texts), "max_new": p.max_new, "eos_share": sum(rollouts.has_eos) / len(
        rollouts.has_eos), "length_mean": sum(rollouts.lengths()) / len(rollouts.texts),
            "gold_mean": None if gold is None else sum(gold) / len(gold)}


def _loss_and_replies(model_path, tokenizer, pairs, prompts, max_new: int, trust: bool, device: str):
    model = base_model.load_causal_lm(model_path, trust_remote_code=trust, device=device, tokenizer=tokenizer)
    out = heldout_loss(model, tokenizer, pairs), generate(model, tokenizer, prompts, max_new)
    del model
    free_memory()
    return out


def build_base_model(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """The `cpu` profile's tiny model, pre-trained on the training dialogues (reused while data and base settings
    are unchanged); GPU profiles start from their pre-trained model."""
    if not base_model.is_scratch(profile):
        return {"model": profile.base.model, "built": False, "reason": "GPU profiles start from a pre-trained model"}
    summary_path = paths.base / "pretrain_summary.json"
    # built from the prepared data and the tokenizer the data stage trained: its fingerprint is part of the hash
    config_hash = profile.section_hash("data", "base") + ":" + str(lineage.fingerprint_of(read_json(
        paths.result("data_stats"))))
    weights = [paths.base / "model.safetensors", paths.base / "config.json"]
    if not force and summary_path.exists():
        previous = read_json(summary_path)
        if previous.get("config_hash") == config_hash and lineage.stale_reason(previous, paths.root, {}) is None:
            return previous | {"reused": True}
    tok = base_model.load_tokenizer(paths.base)
    summary = base_model.pretrain(pretraining_texts(profile, paths, tok.eos_token), tok, out_dir=paths.base,
                                  settings=profile.base, seed=profile.seed,
                                  max_len=profile.data.max_prompt_tokens + profile.data.max_response_tokens,
                                  context=context_needed(profile),
                                  report=progress_bar("Pre-training the base model", progress))
    if distributed.is_main():  # every rank pre-trained in step (DDP); the main process wrote the weights
        summary = {"config_hash": config_hash} | summary | {
            "lineage": lineage.record(config_hash, {}, paths.root, weights)}
        atomic_write_json(summary_path, summary)
    distributed.barrier()
    return summary | {"reused": False}


def pretraining_texts(profile: Profile, paths: Paths, eos_token: str) -> list[str]:
    """What the scratch base model pre-trains on: the synthetic world's dialogues, or both replies of every real
    training pair."""
    b = profile.base
    if resolve_source(profile) == "synthetic":
        return [t + eos_token for t in pretraining_corpus(b.pretrain_dialogues, profile.seed,
                                                          rude_share=b.rude_share, comply_share=b.comply_share)]
    return base_model.dialogue_texts(data.read_pairs(paths.data_file("train")), eos_token)


# ------------------------------------------------------------------------------------------- 03 reward models
def rm_models(profile: Profile) -> dict[str, dict]:
    """Every reward model the rm stage trains, by id ("arm/seedS"): for each reward-model seed S one per precision
    (training seed S: paired), and for each of the first rm.control_seeds (Profile.arm_seeds) the null arm's (bf16,
    seed S + NULL_SEED_OFFSET) and the noisy arm's (bf16, seed S, `rm.label_noise` of the training labels flipped);
    for the heldout judge one more (bf16, its own seed, trained on the other half of the training pairs)."""
    r = profile.rm
    models = {}
    controls = profile.arm_seeds(NULL_ARM)
    for seed in r.seeds:
        spec = {"seed": seed, "half": "a", "label_noise": 0.0}
        for p in r.precisions:
            models[model_id(p, seed)] = spec | {"arm": p, "precision": p, "train_seed": seed}
        if seed not in controls:
            continue
        if r.null_arm:
            models[model_id(NULL_ARM, seed)] = spec | {"arm": NULL_ARM, "precision": "bf16",
                                                       "train_seed": seed + NULL_SEED_OFFSET}
        if r.noisy_arm:
            models[model_id(NOISY_ARM, seed)] = spec | {"arm": NOISY_ARM, "precision": "bf16", "train_seed": seed,
                                                        "label_noise": r.label_noise,
                                                        "label_noise_on": r.label_noise_on}
    if profile.eval.judge == "heldout":
        models[JUDGE_ARM] = {"arm": JUDGE_ARM, "precision": "bf16", "seed": None, "train_seed": profile.seed + 2,
                             "half": "b", "label_noise": 0.0}
    if profile.eval.second_judge == "same-recipe":
        models[SECOND_JUDGE_ARM] = {"arm": SECOND_JUDGE_ARM, "precision": "bf16", "seed": None,
                                    "train_seed": profile.seed + 3, "half": "fresh", "label_noise": 0.0}
    return models


def model_id(arm: str, seed: int | None) -> str:
    return arm if seed is None else f"{arm}/seed{seed}"


def rm_path(paths: Paths, spec: dict) -> Path:
    return paths.rm(spec["arm"], spec["seed"])


def run_rm(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """03: the reward models from the SFT model, one job each; one that fails is recorded, the rest go on. A model
    finished by an earlier attempt that was stopped (a kill, a crash, a full disk) with the same settings and inputs
    is kept, unless forced: a rerun trains only the missing ones. Under rm.seeds = "auto" (seeds not chosen yet):
    seeds until resolved (seeds_until_resolved), which runs best-of-n too."""
    if profile.rm.seeds_rule == "auto" and not profile.rm.seeds_chosen:
        return seeds_until_resolved(profile, paths, force=force, progress=progress)
    return cycle(RM, profile, paths, force=force, outputs=[rm_path(paths, s) for s in rm_models(profile).values()],
                 compute=lambda: _reward_models(profile, paths, progress, keep_finished=not force))


# ------------------------------------------------------------------------------ 03 seeds until resolved
SEEDS_RULE_FILE = "seeds_rule.json"  # rm.seeds = "auto": how many seeds 03 used, and why (in the results folder)


def at_seeds(profile: Profile, k: int) -> Profile:
    """A profile of rm.seeds = "auto" with its first `k` candidate seeds chosen (k = 0: the plan, none chosen)."""
    r = profile.rm
    candidates = tuple(range(r.seeds_max))
    return replace(profile, rm=replace(r, seeds=candidates[:k] if k else candidates, seeds_chosen=k))


def _seeds_record(paths: Paths) -> dict:
    """The seeds-until-resolved rule's last record ({} when there is none or it is unreadable: it is chosen again)."""
    try:
        return read_json(paths.results / SEEDS_RULE_FILE)
    except (FileNotFoundError, ValueError, OSError):
        return {}


def _plan_hash(profile: Profile) -> str:
    return at_seeds(profile, 0).section_hash(*PPO.sections)


def resolve_seeds(profile: Profile, paths: Paths) -> Profile:
    """The profile every stage after the reward models runs on: under rm.seeds = "auto" with the seeds 03 chose
    (SEEDS_RULE_FILE, for these same settings), else unchanged."""
    if profile.rm.seeds_rule != "auto" or profile.rm.seeds_chosen:
        return profile
    record = _seeds_record(paths)
    if record.get("plan") != _plan_hash(profile):
        raise StaleInputError("rm.seeds='auto': 03 has not chosen the reward-model seeds for these settings yet; "
                              "run 03_Reward_Modeling (or `tinyrlhf run rm`) first")
    return at_seeds(profile, record["chosen"])


def seeds_until_resolved(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """rm.seeds = "auto": reward models and best-of-n on the first rm.seeds_min seeds, then one paired set of
    models (one per arm) more at a time, until the widest headline tax half-width at the headline n is at most
    rm.seeds_target or rm.seeds_max seeds are used (sequential.decide_from_bon). Every model is trained once: its
    key is the plan's, not the round's. A rerun with the same settings reuses the seeds chosen before. Returns the
    rm result of the seeds chosen, with the rule's record."""
    r, plan = profile.rm, _plan_hash(profile)
    kept = _seeds_record(paths)
    rounds = [kept["chosen"]] if kept.get("plan") == plan and not force else range(r.seeds_min, r.seeds_max + 1)
    history = kept.get("history", []) if len(rounds) == 1 else []
    for k in rounds:
        at = at_seeds(profile, k)
        result = cycle(RM, at, paths, force=force and k == r.seeds_min,
                       outputs=[rm_path(paths, spec) for spec in rm_models(at).values()],
                       compute=lambda at=at, first=k == r.seeds_min: _reward_models(
                           at, paths, progress, keep_finished=not (force and first)))
        bon_result = run_bon(at, paths, force=force, progress=progress)
        if len(rounds) == 1:
            break
        history.append(sequential.decide_from_bon(bon_result, headline_family(at), target=r.seeds_target, seeds=k,
                                                  seeds_min=r.seeds_min, seeds_max=r.seeds_max))
        if history[-1]["stop"]:
            break
    record = {"plan": plan, "chosen": k, "target": r.seeds_target, "seeds_min": r.seeds_min,
              "seeds_max": r.seeds_max, "history": history, "rule": sequential.RULE}
    if distributed.is_main():
        atomic_write_json(paths.results / SEEDS_RULE_FILE, to_json_ready(record))
    return result | {"seeds_rule": record}


def headline_family(profile: Profile) -> list[str]:
    """The arms whose "costs less than" are best-of-n's headline claims: each quantized precision, trained and
    served."""
    quantized = [p for p in profile.rm.precisions if p != "bf16"]
    return [a for a in profile.bon_arms if a.removeprefix(SERVED_PREFIX) in quantized]


def finished_key(stage: Stage, profile: Profile, paths: Paths, *parts) -> str:
    """What one unit of a stage (a reward model, a scorer's pool scores, a PPO run) was made from: the stage's
    settings, the fingerprints of the upstream results it read (checked current by `cycle` before it computes)
    and `parts` (the unit's own identity)."""
    ups = [lineage.fingerprint_of(read_json(paths.result(kind))) for kind in lineage.UPSTREAM[stage.kind]]
    return ":".join(map(str, [config_hash(stage, profile), *ups, *parts]))


def finished_model(folder: Path, key: str) -> dict | None:
    """The evaluation record of a reward model in `folder` finished with the same `key`, when every file it was
    saved with is still there with the same size and sha256; else None (it is trained again)."""
    try:
        saved = read_json(folder / RM_RECORD)
    except (FileNotFoundError, ValueError, OSError):
        return None
    record, files = saved.get("record") or {}, saved.get("files") or {}
    if saved.get("key") != key or record.get("status") != "ok" or not files:
        return None
    return record if lineage.output_problem({"lineage": {"outputs": files}}, folder) is None else None


def _keep_model(folder: Path, key: str, record: dict) -> None:
    """Save a finished reward model's record beside it, with the digests of the files it was saved with."""
    files = {rel: d for rel, d in lineage.describe_outputs(folder, [folder]).items() if rel != RM_RECORD}
    atomic_write_json(folder / RM_RECORD, {"key": key, "files": files, "record": record})


def _reward_models(profile: Profile, paths: Paths, progress: bool, keep_finished: bool = True):
    if not (paths.sft_merged / "config.json").exists():
        raise RewardModelError(f"no SFT model in {paths.sft_merged}: run 02_SFT_Finetuning first")
    ######## The training pairs: all of them, or two halves when a reward model is the judge ########
    train = data.read_pairs(paths.data_file("train"))
    relabelled = None
    if profile.rm.labels == "judge":  # once, here: every job trains on the same relabelled pairs
        train, relabelled = relabel_by_judge(train, profile, paths)
    halves = dict(zip("ab", data.split_by_prompt(train, 0.5, profile.seed))) if profile.eval.judge == "heldout" \
        else {"a": train}
    if profile.eval.second_judge == "same-recipe":
        halves["fresh"] = fresh_pairs(profile, paths, train, data.read_pairs(paths.data_file("test")))

    ######## One job per reward model; those an interrupted earlier attempt finished are kept ########
    models = rm_models(profile)
    # under rm.seeds = "auto" a model's key is the plan's: one trained in an earlier round is kept in the next
    keyed = at_seeds(profile, 0) if profile.rm.seeds_rule == "auto" else profile
    jobs = [{"profile": profile, "paths": paths, "id": mid, "train": halves[spec["half"]],
             "key": finished_key(RM, keyed, paths, mid), **spec} for mid, spec in models.items()]
    for job in jobs:
        if keep_finished and (done := finished_model(rm_path(paths, job), job["key"])) is not None:
            job["finished"] = done
    kept = [job["id"] for job in jobs if "finished" in job]
    if kept:
        log.info("rm: %d reward model(s) finished by an earlier, interrupted attempt are kept", len(kept))
    labels = [f"RM {mid} ({i + 1}/{len(jobs)})" for i, mid in enumerate(models)]
    records = run_jobs(_rm_job, jobs, workers=profile.workers, threads=profile.threads, labels=labels,
                       overall="Reward models finished",
                       progress=progress, failed=lambda job, reason: {
                           "status": "failed", "reason": reason, "arm": job["arm"], "precision": job["precision"],
                           "seed": job["seed"], "train_seed": job["train_seed"]})

    if not distributed.is_main():
        return None
    ######## Every reward model beside the bf16 model of its seed, on the same test pairs; each arm over seeds ########
    records = dict(zip(models, records))
    compare_with_reference(records, profile.rm.seeds)
    arms = {arm: seed_summary([records[model_id(arm, s)] for s in profile.arm_seeds(arm)]) for arm in profile.arms}
    for judge_arm in (JUDGE_ARM, SECOND_JUDGE_ARM):
        if judge_arm in records:
            arms[judge_arm] = seed_summary([records[judge_arm]])
    return {"models": records, "arms": arms, "seeds": list(profile.rm.seeds), "kept_from_earlier_attempt": kept,
            "null_arm": NULL_ARM if profile.rm.null_arm else None,
            "noisy_arm": NOISY_ARM if profile.rm.noisy_arm else None, "label_noise": profile.rm.label_noise,
            "label_noise_on": profile.rm.label_noise_on if profile.rm.noisy_arm else None,
            "judge_arm": JUDGE_ARM if JUDGE_ARM in records else None,
            "second_judge_arm": SECOND_JUDGE_ARM if SECOND_JUDGE_ARM in records else None,
            "labels": profile.rm.labels, "relabelled": relabelled}, {
        "seeds": list(profile.rm.seeds), "data_source": data_source_of(paths),
        "timings": {m: r.get("train_seconds") for m, r in records.items()},
        "peak_memory": {m: r.get("peak_memory_bytes") for m, r in records.items()}}


def fresh_pairs(profile: Profile, paths: Paths, train: list, test: list) -> list:
    """The same-recipe judge's training pairs: generated afresh by the synthetic data's generator with another
    seed, none a training pair of the arms nor a pair of a test prompt (those best-of-n evaluates), as many as the
    arms train on, and length-filtered as the data stage filters. The arms keep every training pair."""
    d = profile.data
    raw = data.load_source("synthetic", subsets=d.subsets, synthetic_pairs=3 * len(train), seed=profile.seed
                           + FRESH_DATA_SEED, off_topic_share=d.off_topic_share)
    seen = {(p.prompt, p.chosen, p.rejected) for p in train}
    held = {p.prompt for p in test}
    pairs, _ = data.deduplicate(data.with_categories(data.parse_source(raw, d.max_skipped_share)[0]))
    pairs = [p for p in pairs if (p.prompt, p.chosen, p.rejected) not in seen and p.prompt not in held]
    tokenizer = base_model.load_tokenizer(tokenizer_path(profile, paths),
                                          trust_remote_code=profile.base.trust_remote_code)
    kept, _ = data.filter_by_length({"fresh": pairs}, tokenizer, d.max_prompt_tokens, d.max_response_tokens,
                                    data.ParseReport())
    if len(kept["fresh"]) < len(train):
        raise RewardModelError(f"the same-recipe judge needs {len(train)} fresh pairs and the generator gave "
                               f"{len(kept['fresh'])} that no arm saw: set eval.second_judge='none'")
    return kept["fresh"][: len(train)]


def judge_accuracy(spec: dict, models: dict, pair_scores: tuple | None) -> dict:
    """How often the judge prefers the data's chosen reply on the first rm.eval_pairs test pairs (the pairs every
    reward model is evaluated on; `pair_scores`: a text judge's (chosen, rejected) scores of them), with its Wilson
    interval: on real data, how far the judge agrees with the human labels. A reward-model judge's is its 03
    record's."""
    if spec["kind"] == "reward_model":
        rec = models.get(JUDGE_ARM, {})
        return {"pairs": rec.get("n_test_pairs"), "accuracy": rec.get("accuracy"),
                "accuracy_ci95": rec.get("accuracy_ci95")}
    chosen, rejected = pair_scores
    wins = sum(c > r for c, r in zip(chosen, rejected)) + 0.5 * sum(c == r for c, r in zip(chosen, rejected))
    return {"pairs": len(chosen), "accuracy": wins / len(chosen), "accuracy_ci95": wilson_ci(round(wins), len(chosen))}


def relabel_by_judge(pairs: list, profile: Profile, paths: Paths) -> tuple[list, dict]:
    """rm.labels = "judge": every training pair's chosen reply is the one the judge scores higher (ties keep the
    data's label), so the judge is the gold the reward models learn (Gao et al. 2022). Returns the pairs and what
    changed: how many, how many swapped, how many tied, by which judge."""
    spec = judge_spec(profile, paths, {})
    judge = evaluate.load_judge(spec, trust_remote_code=profile.base.trust_remote_code, cpu_dtype=profile.rm.cpu_dtype,
                                device=score_device(profile))
    chosen, rejected = evaluate.judge_pair_scores(judge, pairs)
    out = [replace(p, chosen=p.rejected, rejected=p.chosen, category=None) if c < r else p
           for p, c, r in zip(pairs, chosen, rejected)]
    return out, {"judge": spec["name"], "pairs": len(pairs), "swapped": sum(c < r for c, r in zip(chosen, rejected)),
                 "tied": sum(c == r for c, r in zip(chosen, rejected))}


class TrainThenEvaluate:
    """A job's progress: its training steps, then one more for the evaluation after training (scoring on the CPU
    takes as long as a good part of training at the real size, and the bar should not sit at 100% meanwhile)."""

    def __init__(self, report):
        self.report, self.total = report, 1

    def __call__(self, done: int, total: int) -> None:
        self.total = total + 1
        self.report(done, self.total)

    def evaluated(self) -> None:
        self.report(self.total, self.total)


def _rm_job(job: dict, report) -> dict:
    """Train one reward model, reload it as saved (proving it loads at its precision) and evaluate it on CPU."""
    if "finished" in job:
        report(1, 1)
        return job["finished"]
    profile, paths, precision = job["profile"], job["paths"], job["precision"]
    r, trust, progress = profile.rm, profile.base.trust_remote_code, TrainThenEvaluate(report)
    who = {"arm": job["arm"], "precision": precision, "seed": job["seed"], "train_seed": job["train_seed"],
           "label_noise": job["label_noise"]}
    try:
        tokenizer = base_model.load_tokenizer(paths.sft_merged, trust_remote_code=trust)
        train, flipped, validation = _training_pairs(job, profile)
        with atomic_folder(rm_path(paths, job)) as written:
            run = train_reward_model(
                train, init_path=str(paths.sft_merged), tokenizer=tokenizer, precision=precision,
                out_dir=written, batch_size=r.batch_size, lr=r.lr, epochs=r.epochs, accum=r.accum,
                warmup=r.warmup, max_steps=r.max_steps, lora_r=r.lora_r, lora_alpha=r.lora_alpha,
                lora_dropout=r.lora_dropout, target_modules=r.target_modules, double_quant=r.double_quant,
                max_length=profile.data.max_prompt_tokens + profile.data.max_response_tokens + 1,
                seed=job["train_seed"], profile=profile, callbacks=[progress_callback(progress)],
                validation=validation, eval_every=r.eval_every, patience=r.patience)
        free_memory()
        if not distributed.is_main():  # evaluation and records are the main process's
            return {"status": "ok", "reason": None, **who}
        device = score_device(profile)
        model, info = load_for_scoring(rm_path(paths, job), trust_remote_code=trust, device=device,
                                       int8_cpu_matmul=r.int8_cpu_matmul, cpu_kernel=r.cpu_kernel,
                                       cpu_dtype=r.cpu_dtype)
        test = data.read_pairs(paths.data_file("test"))[: r.eval_pairs]
        ev = evaluate_reward_model(model, tokenizer, test) | {"cpu_kernel": info["kernel"], "score_device": device}
        # What the arm computed, by phase and device: one arithmetic (kernels.ARITHMETIC), named so 03 shows it
        ev["arithmetic"] = {"train": f"{ARITHMETIC[precision]}; {run['compute_dtype']} on {resolve_device(profile)}"
                                     + (", bitsandbytes layers pinned" if precision != "bf16" else ""),
                            "score": info["arithmetic"]}
        # How far bitsandbytes' own CPU paths are from the kernel PPO scores with: once per precision (first seed)
        # (on the CPU, where PPO scores, whichever device scored the test pairs above)
        if precision != "bf16" and job["seed"] == r.seeds[0]:
            ev["cpu_kernel_check"] = compare_cpu_kernels(rm_path(paths, job), tokenizer, test, ev,
                                                         info["kernel"]["kernel"], trust_remote_code=trust,
                                                         cpu_dtype=r.cpu_dtype)
        progress.evaluated()
        footprint = info["footprint_bytes"]
        ref = weakref.ref(model)
        del model
        record = {"status": "ok", "reason": None, **who,
                "train_pairs": len(train), "flipped_pairs": len(flipped), **ev,
                "footprint_bytes": footprint, "train_seconds": run["train_seconds"],
                "peak_memory_bytes": run["peak_memory"]["peak_bytes"], "peak_memory": run["peak_memory"],
                "memory": measured_vs_estimate(profile, f"rm_{precision}", run["peak_memory"]),
                "compute_dtype": run["compute_dtype"], "trainable_parameters": run["trainable_parameters"],
                "steps": run["steps"],
                "loss_curve": [h["loss"] for h in run["loss_curve"]], "released": collected(ref),
                "rss_after_release_bytes": current_rss_bytes()} | (
            {"ranks": run["ranks"]} if distributed.launched() else {})
        _keep_model(rm_path(paths, job), job["key"], record)  # a rerun after a kill keeps it
        return record
    except Exception as e:  # recorded; the other reward models go on
        record = failure(e, "rm.batch_size") | who
    free_memory()  # outside the except block, where the failed run's frames are no longer held
    return record


def _training_pairs(job: dict, profile: Profile) -> tuple[list, list[int], list | None]:
    """A reward model's training pairs, the indices of those whose labels were swapped (the noisy arm: the positive
    control), and with rm.early_stopping its validation pairs, held out by prompt with the profile's seed: the same
    prompts for every arm and seed (the noisy arm's keep their swapped labels: it is stopped on its own data)."""
    r, train, flipped = profile.rm, job["train"], []
    if job["label_noise"]:
        train, flipped = data.flip_labels(train, job["label_noise"], job["train_seed"], on=job["label_noise_on"])
    if not r.early_stopping:
        return train, flipped, None
    train, validation = data.split_by_prompt(train, min(0.2, r.validation_pairs / len(train)), profile.seed)
    return train, flipped, validation


def compare_with_reference(records: dict, seeds) -> None:
    """Agreement, rank correlation and McNemar's paired test of every finished reward model against the bf16 model
    of its own seed, on the same test pairs; the per-pair scores are then dropped (not part of the result file)."""
    for rec in records.values():
        if rec.get("status") != "ok":
            continue
        ref = records.get(model_id("bf16", rec["seed"]), {}) if rec["seed"] in seeds else {}
        if rec["arm"] == "bf16":
            rec.update(agreement_with_bf16=1.0, rank_correlation_with_bf16=1.0, mcnemar_vs_bf16=None)
        elif ref.get("status") == "ok":
            wins, ref_wins = rec["wins"], ref["wins"]
            rec.update(agreement_with_bf16=sum(a == b for a, b in zip(wins, ref_wins)) / len(wins),
                       rank_correlation_with_bf16=spearman(rec["scores_chosen"] + rec["scores_rejected"],
                                                           ref["scores_chosen"] + ref["scores_rejected"]),
                       mcnemar_vs_bf16=mcnemar(ref_wins, wins))
        else:
            rec.update(agreement_with_bf16=None, rank_correlation_with_bf16=None, mcnemar_vs_bf16=None)
    for rec in records.values():
        for key in ("wins", "scores_chosen", "scores_rejected"):
            rec.pop(key, None)


# -------------------------------------------------------------------------------------------- 03 best-of-n
def run_bon(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """03, after the reward models: paired best-of-n (Gao et al. 2022) on one candidate pool, the tax of every arm
    before any PPO run."""
    profile = resolve_seeds(profile, paths)
    return cycle(BON, profile, paths, force=force, outputs=[paths.bon_pool],
                 compute=lambda: _best_of_n(profile, paths, progress))


def bon_scorers(profile: Profile) -> dict[str, dict]:
    """Every (arm, seed) that ranks the pool: the models PPO trains against, and each quantized precision served
    from the bf16-trained model of the same seed (its backbone quantized after training)."""
    scorers = {}
    for arm in profile.bon_arms + profile.bits_arms:
        for seed in profile.arm_seeds(arm):
            served = arm.startswith(SERVED_PREFIX)
            trained = "bf16" if served else arm
            scorers[model_id(arm, seed)] = {"arm": arm, "seed": seed, "model_arm": trained,
                                            "model": model_id(trained, seed),
                                            "serve_precision": arm[len(SERVED_PREFIX):] if served else None}
    if profile.eval.second_judge == "same-recipe":  # it judges the pool a second time (bon.judge_shift)
        scorers[SECOND_JUDGE_ARM] = {"arm": SECOND_JUDGE_ARM, "seed": None, "model_arm": SECOND_JUDGE_ARM,
                                     "model": SECOND_JUDGE_ARM, "serve_precision": None}
    return scorers


def _best_of_n(profile: Profile, paths: Paths, progress: bool):
    if not distributed.is_main():  # inference only: the main process samples and scores, the others wait
        return None
    if "bf16" not in profile.rm.precisions:
        raise PPOError("best-of-n compares every arm with bf16: keep bf16 in rm.precisions")
    if not (paths.sft_merged / "config.json").exists():
        raise PPOError(f"no SFT model in {paths.sft_merged}: run 02_SFT_Finetuning first")
    p, e, trust = profile.ppo, profile.eval, profile.base.trust_remote_code
    models = intact_rm_records(paths, read_json(paths.result("rm")))
    judge = judge_spec(profile, paths, models, device=score_device(profile))
    prompts = evaluate.eval_prompts([q.prompt for q in data.read_pairs(paths.data_file("test"))], e.prompts,
                                    profile.seed)

    ######## The pool: bon_pool replies per prompt from the SFT policy, sampled as PPO samples, judged once ########
    tokenizer = base_model.load_tokenizer(paths.sft_merged, trust_remote_code=trust)
    policy = base_model.load_causal_lm(paths.sft_merged, trust_remote_code=trust, device=resolve_device(profile))
    t0 = time.perf_counter()
    pool = evaluate.sample(policy, tokenizer, prompts, samples=e.bon_pool, max_new=p.max_new,
                           temperature=p.temperature, seed=profile.seed, chunk=bon_sample_chunk(profile),
                           report=progress_bar("Sampling the candidate pool", progress))
    del policy
    free_memory()
    # the judge, loaded once (the card is idle), also scores the test pairs its agreement with the labels is read on
    test_pairs = [] if judge["kind"] == "reward_model" else \
        data.read_pairs(paths.data_file("test"))[: profile.rm.eval_pairs]
    gold, cut, on_pairs = evaluate.judge_once(judge, pool, eos_token_id=tokenizer.eos_token_id,
                                              device=score_device(profile), missing_eos_penalty=p.missing_eos_penalty,
                                              trust_remote_code=trust, cpu_dtype=profile.rm.cpu_dtype,
                                              pairs=test_pairs)
    sample_seconds = time.perf_counter() - t0

    ######## Every reward model (and each bf16 model served quantized) scores every candidate ########
    # Each scorer's scores kept as it finishes, for this pool's digest: a rerun after a kill scores only the rest
    scorers, digest = bon_scorers(profile), pool_digest(pool)
    jobs = [{"profile": profile, "paths": paths, "pool": pool, "eos": tokenizer.eos_token_id, "id": sid, **spec,
             "skip": None if models.get(spec["model"], {}).get("status") == "ok" else
             f"reward model {spec['model']} failed in 03: {models.get(spec['model'], {}).get('reason')}",
             "kept": pool_scores_path(paths, sid), "key": finished_key(BON, profile, paths, sid, digest)}
            for sid, spec in scorers.items()]
    scores = run_jobs(_score_pool_job, jobs, workers=profile.workers, threads=profile.threads,
                      labels=[f"Ranking the pool: {sid}" for sid in scorers], overall="Reward models scored",
                      progress=progress, failed=lambda job, reason: {"status": "failed", "reason": reason})

    ######## Best-of-n per arm: gains, taxes at every n and at n*, intervals over seeds and prompts ########
    # Seed row i is rm.seeds[i] in every arm (paired); NaN where a model failed or, for a control arm, was not trained
    n_prompts, size = len(prompts), e.bon_pool
    shape = lambda values: np.asarray(values, dtype=float).reshape(n_prompts, size)
    by_id = dict(zip(scorers, scores))
    analysis = _analyse_pool(profile, shape(gold), by_id, shape)
    if profile.eval.second_judge == "same-recipe":
        analysis["second_judge"] = _second_judge(profile, shape(gold), by_id, shape, analysis["n_star"], models)
    _write_pool(paths.bon_pool, pool, gold, {sid: rec.get("scores") for sid, rec in by_id.items()})
    result = {"judge": judge | cut | {"test_pairs": judge_accuracy(judge, models, on_pairs)}, "prompts": n_prompts,
              "pool_size": size, "candidates": len(pool.texts),
              **_pool_facts(pool), "scorers": _scorer_records(scorers, scores),
              "samples": _pool_samples(pool, gold, e.show_samples), "arms_info": _bon_arms_info(profile, models),
              **analysis}
    return result, {"seeds": list(profile.rm.seeds), "data_source": data_source_of(paths),
                    "timings": {"sample_seconds": sample_seconds,
                                "scoring_seconds": sum(rec.get("seconds") or 0 for rec in scores)}}


def _analyse_pool(profile: Profile, gold: np.ndarray, by_id: dict, shape) -> dict:
    """bon.analyse of every arm's rankings: seed row i is rm.seeds[i] in every arm (paired), NaN where a model
    failed or, for a control arm, was not trained. The headline's family is the quantized arms, trained and served;
    the bits sweep is reported apart, and each precision's trained arm is compared with its served one."""
    every = profile.bon_arms + profile.bits_arms
    proxies = _pool_proxies(profile, by_id, shape, gold.shape, every)
    planned = {arm: [i for i, seed in enumerate(profile.rm.seeds) if seed in profile.arm_seeds(arm)] for arm in every}
    quantized = [p for p in profile.rm.precisions if p != "bf16"]
    out = bon.analyse(gold, proxies, reference="bf16", null=NULL_ARM if NULL_ARM in profile.arms else None,
                       planned=planned, headline_n=profile.eval.headline_n or None,
                       family=headline_family(profile),
                       sweep={arm: int(arm.removeprefix(SERVED_PREFIX + "w")) for arm in profile.bits_arms},
                       served_pairs={p: SERVED_PREFIX + p for p in quantized if SERVED_PREFIX + p in every})
    if out["bits"] is not None:
        out["bits"] |= {"group": profile.eval.serve_group,
                        "how": "bf16-trained backbone's linear layers at k-bit integer weights, asymmetric, one scale "
                               f"and zero point per {profile.eval.serve_group} inputs (torchao IntxWeightOnlyConfig); "
                               "LoRA adapters and the score head as trained"}
    return out


def _pool_proxies(profile: Profile, by_id: dict, shape, cells: tuple, arms) -> dict:
    """Each arm's scores of the pool, (seeds x prompts x candidates): seed row i is rm.seeds[i], NaN where a model
    failed or was not trained."""
    missing = np.full(cells, np.nan)
    return {arm: np.stack([shape(by_id[sid]["scores"]) if by_id.get(sid, {}).get("status") == "ok" else missing
                           for sid in (model_id(arm, seed) for seed in profile.rm.seeds)]) for arm in arms}


def _second_judge(profile: Profile, gold: np.ndarray, by_id: dict, shape, n: int | None, models: dict) -> dict:
    """Best-of-n's taxes under the same-recipe judge beside the judge's (bon.judge_shift), at the headline n, for
    the headline's arms and the null control: how much a judge that resembles the bf16 arm moves them."""
    rec, spec = by_id.get(SECOND_JUDGE_ARM, {}), models.get(SECOND_JUDGE_ARM, {})
    about = {"name": f"bf16 reward model of the bf16 arm's recipe and size, seed {spec.get('train_seed')}, trained on "
                     f"{spec.get('train_pairs')} freshly generated pairs no arm saw",
             "test_accuracy": spec.get("accuracy")}
    if rec.get("status") != "ok" or n is None:
        return about | {"status": "failed", "reason": rec.get("reason") or "no headline n (bf16's gain never peaks)"}
    arms = [a for a in profile.bon_arms if a != "bf16"]
    shift = bon.judge_shift(gold, shape(rec["scores"]), _pool_proxies(profile, by_id, shape, gold.shape,
                                                                      ["bf16", *arms]), n=n, reference="bf16",
                            arms=arms)
    return about | {"status": "ok", "reason": None} | shift


def _pool_facts(pool) -> dict:
    lengths = pool.lengths()
    return {"pool_eos_share": sum(pool.has_eos) / len(pool.has_eos), "pool_length_mean": sum(lengths) / len(lengths)}


def _scorer_records(scorers: dict, scores: list[dict]) -> dict:
    """Who ranked the pool, with which kernel and how long it took; the scores themselves are in the pool file."""
    return {sid: {"arm": spec["arm"], "seed": spec["seed"], "model": spec["model"],
                  "serve_precision": spec["serve_precision"], "status": rec["status"], "reason": rec.get("reason"),
                  "kernel": rec.get("kernel"), "seconds": rec.get("seconds")}
            for (sid, spec), rec in zip(scorers.items(), scores)}


def _bon_arms_info(profile: Profile, models: dict) -> dict:
    """Each best-of-n arm's precisions: the one its reward models trained at, and the one they scored at."""
    info = {}
    for arm in profile.bon_arms + profile.bits_arms:
        served = arm.startswith(SERVED_PREFIX)
        trained = "bf16" if served else models.get(model_id(arm, profile.rm.seeds[0]), {}).get("precision", arm)
        info[arm] = {"served": served, "trained_precision": trained,
                     "scored_precision": arm[len(SERVED_PREFIX):] if served else trained}
    return info


def pool_digest(pool) -> str:
    """sha256 of a candidate pool's prompts and replies: which pool a scorer's kept scores belong to."""
    blob = json.dumps([pool.prompts, pool.samples, pool.texts, pool.has_eos], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def pool_scores_path(paths: Paths, sid: str) -> Path:
    return paths.bon_pool.parent / "scores" / f"{sid}.json"


def kept_pool_scores(path: Path, key: str, pool) -> dict | None:
    """A scorer's record kept by an earlier attempt with the same `key` and a score for every candidate of `pool`,
    or None."""
    try:
        saved = read_json(path)
    except (FileNotFoundError, ValueError, OSError):
        return None
    record = saved.get("record") or {}
    ok = saved.get("key") == key and record.get("status") == "ok" and len(record.get("scores") or []) == len(
        pool.texts)
    return record if ok else None


def _score_pool_job(job: dict, report) -> dict:
    """One reward model's scores of every candidate, through PPO's CPU scoring path; kept as soon as it finishes."""
    if job["skip"]:
        return {"status": "failed", "reason": job["skip"]}
    if (kept := kept_pool_scores(job["kept"], job["key"], job["pool"])) is not None:
        report(1, 1)
        return kept
    profile, paths = job["profile"], job["paths"]
    try:
        t0 = time.perf_counter()
        device = score_device(profile)
        model, info = load_for_scoring(paths.rm(job["model_arm"], job["seed"]),
                                       trust_remote_code=profile.base.trust_remote_code, device=device,
                                       int8_cpu_matmul=profile.rm.int8_cpu_matmul, cpu_kernel=profile.rm.cpu_kernel,
                                       serve_precision=job["serve_precision"], cpu_dtype=profile.rm.cpu_dtype,
                                       serve_group=profile.eval.serve_group)
        scores = evaluate.proxy_scores(CPURewardModel(model, device), job["pool"], eos_token_id=job["eos"],
                                       missing_eos_penalty=profile.ppo.missing_eos_penalty, report=report)
        record = {"status": "ok", "reason": None, "scores": scores, "kernel": info["kernel"],
                  "seconds": time.perf_counter() - t0}
        del model
        atomic_write_json(job["kept"], {"key": job["key"], "record": record})
    except Exception as e:  # recorded; the other scorers go on
        record = failure(e)
    free_memory()
    return record


def _pool_samples(pool, gold, k: int) -> list[dict]:
    """The first `k` candidates of the first prompt, as text, with their gold score: what the pool looks like."""
    return [{"prompt": pool.prompt_of_row[i], "response": pool.texts[i], "gold": gold[i], "ended": pool.has_eos[i]}
            for i in range(min(k, len(pool.texts)))]


def _write_pool(path: Path, pool, gold, scores: dict) -> None:
    """Every candidate, its gold score and every reward model's score, one JSON line each (for reading samples)."""
    atomic_write_jsonl(path, [{"prompt": pool.prompt_of_row[i], "reply": pool.texts[i], "ended": pool.has_eos[i],
                               "gold": gold[i], "scores": {sid: (s[i] if s else None) for sid, s in scores.items()}}
                              for i in range(len(pool.texts))])


# ------------------------------------------------------------------------------------------------------ 04 PPO
def run_ppo(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True,
            on_run: Callable[[list[dict]], None] | None = None) -> dict:
    """04: PPO against every arm's reward model of every reward-model seed, evaluated along training by the judge
    and the proxy; the cross matrix; gains, taxes and the controls with intervals over seeds and prompts; the
    frontier. `on_run(finished)` runs as each policy finishes (the SFT policy's evaluation and every PPO run), with
    one row per finished policy (policy, rm_seed, seed, status, judge_mean): what 04 shows while the rest train."""
    profile = resolve_seeds(profile, paths)
    policies = [paths.policy(arm, seed) for arm, _, seed in ppo_runs(profile)]
    return cycle(PPO, profile, paths, force=force, outputs=policies,
                 compute=lambda: _experiment(profile, paths, progress, keep_finished=not force, on_run=on_run))


def ppo_runs(profile: Profile) -> list[tuple[str, int, int]]:
    """(arm, reward-model seed, PPO seed) of every PPO run: `ppo.runs_per_model` per reward model."""
    return [(arm, rm_seed, profile.ppo_seed(rm_seed, r)) for arm in profile.arms
            for rm_seed in profile.ppo_rm_seeds(arm) for r in range(profile.ppo.runs_per_model)]


def _experiment(profile: Profile, paths: Paths, progress: bool, keep_finished: bool = True, on_run=None):
    ######## Inputs: the SFT policy, the reward models that finished, the judge, the evaluation prompts ########
    if not (paths.sft_merged / "config.json").exists():
        raise PPOError(f"no SFT model in {paths.sft_merged}: run 02_SFT_Finetuning first")
    base_model.check_context(paths.sft_merged, context_needed(profile),
                             trust_remote_code=profile.base.trust_remote_code)
    rm_records = intact_rm_records(paths, read_json(paths.result("rm")))
    usable = [mid for mid in rm_models(profile) if mid not in (JUDGE_ARM, SECOND_JUDGE_ARM)
              and rm_records.get(mid, {}).get("status") == "ok"]
    if not any(rm_records[mid]["arm"] == "bf16" for mid in usable):
        raise PPOError("every bf16 reward model is missing or failed: every tax is relative to bf16; rerun "
                       "03_Reward_Modeling")
    if profile.ppo.gate:  # before any of the night's hours: are the reward models good enough to measure with?
        go = go_no_go(profile, paths)
        if not go["go"]:
            raise NoGoError(go["sentence"])
    judge = judge_spec(profile, paths, rm_records)
    prompts = evaluate.eval_prompts([p.prompt for p in data.read_pairs(paths.data_file("test"))],
                                    profile.eval.prompts, profile.seed)

    ######## One job for the SFT policy, one per PPO run; each run is evaluated along training ########
    jobs = _policy_jobs(profile, paths, {"profile": profile, "paths": paths, "prompts": prompts, "judge": judge,
                                         "scorers": usable}, rm_records, keep_finished)
    labels = ["Evaluating the SFT policy"] + [
        f"PPO {j['arm']} · RM seed {j['rm_seed']} · PPO seed {j['seed']} ({i + 1}/{len(jobs) - 1})"
        for i, j in enumerate(jobs[1:])]
    finished: list[dict] = []

    def one_finished(i: int, rec: dict) -> None:
        job = jobs[i]
        finished.append({"policy": job["arm"], "rm_seed": job.get("rm_seed"), "seed": job.get("seed"),
                         "status": rec.get("status"), "judge_mean": rec.get("judge_mean")})
        on_run(list(finished))

    results = run_jobs(_policy_job, jobs, workers=profile.workers, threads=profile.threads, labels=labels,
                       overall="Policies finished (SFT evaluation and every PPO run)",
                       progress=progress, on_result=one_finished if on_run and distributed.is_main() else None,
                       failed=lambda job, reason: {"seed": job["seed"], "rm_seed": job.get("rm_seed"),
                                                   "status": "failed", "reason": reason})
    if not distributed.is_main():
        return None
    sft, runs = results[0], {arm: [] for arm in profile.arms}
    for job, rec in zip(jobs[1:], results[1:]):
        runs[job["arm"]].append(rec | {"rm_seed": job["rm_seed"]})
    if sft.get("status") != "ok":
        raise PPOError(f"the SFT policy could not be evaluated: {sft.get('reason')}")

    ######## Statistics: gains, taxes, the controls, the frontier ########
    return _experiment_result(profile, paths, judge, prompts, sft, runs, usable)


class NoGoError(PPOError):
    """The go/no-go before PPO said no (tinyrlhf.gate): its sentence has the numbers and what to raise."""


def go_no_go(profile: Profile, paths: Paths) -> dict:
    """gate.verdict on the current rm and best-of-n results (a best-of-n result not current for these settings and
    reward models counts as missing)."""
    profile = resolve_seeds(profile, paths)
    bon_path, bon_result = paths.result("bon"), None
    if bon_path.exists() and _not_reusable(bon_path, config_hash(BON, profile), upstream_inputs(BON, profile, paths),
                                           paths.root) is None:
        bon_result = read_json(bon_path)
    return gate.verdict(profile, read_json(paths.result("rm")), bon_result)


def intact_rm_records(paths: Paths, rm_result: dict) -> dict:
    """The rm stage's records per reward model, one whose files are missing or changed since 03 wrote them marked
    failed (that model's failure, not the stage's)."""
    records = {}
    for mid, rec in rm_result["models"].items():
        problem = rec.get("status") == "ok" and lineage.output_problem(
            rm_result, paths.root, paths.relative(paths.rm(rec["arm"], rec["seed"])))
        records[mid] = rec | {"status": "failed", "reason": f"{problem}; rerun 03_Reward_Modeling"} if problem else rec
    return records


def judge_spec(profile: Profile, paths: Paths, rm_records: dict, device: str = "cpu") -> dict:
    """Which judge scores every policy, and why it is one no arm trained against; a public one's record also says at
    which commit, whether it reads its chat template, and the dtype and `device` it scores in."""
    judge = profile.eval.judge
    if judge == "gold":
        if resolve_source(profile) != "synthetic":
            raise PPOError("eval.judge='gold' knows only the synthetic data's rules; on other data set eval.judge to "
                           "'heldout' or to a reward model's path or hub id")
        return {"kind": "gold", "name": "gold reward (the synthetic generator's rules)", "path": None,
                "why": "written from the rules that generated the data; no arm's reward model is trained on it",
                "rule": GOLD_RULE}
    if judge == "heldout":
        rec = rm_records.get(JUDGE_ARM, {})
        if rec.get("status") != "ok":
            raise PPOError(f"the heldout judge's reward model failed in 03: {rec.get('reason')}")
        return {"kind": "reward_model", "path": str(paths.rm(JUDGE_ARM)),
                "name": f"bf16 reward model, other half of the training pairs, seed {rec['train_seed']}",
                "why": "trained on pairs no arm saw, with another seed; every arm is a column of the cross matrix"}
    facts = evaluate.text_judge_facts(judge, revision=profile.eval.judge_revision, device=device,
                                      cpu_dtype=profile.rm.cpu_dtype, trust_remote_code=profile.base.trust_remote_code,
                                      pins=paths.hub_pins)  # the spec carries the commit: every load takes it
    return {"kind": "external", "name": judge, "path": judge, **facts,
            "why": f"named by eval.judge, no arm trained against it; it reads the decoded replies as {facts['reads']}"}


RUN_FILE = "run.json"  # a finished PPO run's record, beside its adapter


def _policy_jobs(profile: Profile, paths: Paths, base: dict, rm_records: dict, keep_finished: bool) -> list[dict]:
    """The SFT policy's evaluation, then one job per PPO run: skipped when its reward model failed, and (unless
    forced) carrying its record when an interrupted earlier attempt finished it with the same settings and
    inputs."""
    key = finished_key(PPO, profile, paths, *base["scorers"])
    jobs = [base | {"arm": "sft", "seed": profile.seed, "rm_seed": None}]
    for arm, rm_seed, seed in ppo_runs(profile):
        mid = model_id(arm, rm_seed)
        job = base | {"arm": arm, "rm_seed": rm_seed, "seed": seed, "key": key}
        if mid not in base["scorers"]:
            job["skip"] = rm_records.get(mid, {}).get("reason") or "no reward model"
        elif keep_finished and (done := finished_run(paths.policy(arm, seed), key)) is not None:
            job["finished"] = done
        jobs.append(job)
    kept = sum("finished" in j for j in jobs)
    if kept:
        log.info("ppo: %d run(s) finished by an earlier, interrupted attempt are kept", kept)
    return jobs


def finished_run(folder: Path, key: str) -> dict | None:
    """The record of a run in `folder` finished with the same `key` (settings, upstream results, scorers)."""
    try:
        saved = read_json(folder / RUN_FILE)
    except (FileNotFoundError, ValueError):
        return None
    record = saved.get("record") or {}
    ok = saved.get("key") == key and record.get("status") == "ok"
    return record if ok and (folder / "adapter_model.safetensors").is_file() else None


def _policy_job(job: dict, report) -> dict:
    """The SFT policy's evaluation, or one PPO run evaluated at its checkpoints; a failure is recorded."""
    if "finished" in job:
        return job["finished"]
    if job.get("skip"):
        return {"seed": job["seed"], "status": "failed",
                "reason": f"reward model {model_id(job['arm'], job['rm_seed'])} failed in 03: {job['skip']}"}
    if job["arm"] == "sft" and not distributed.is_main():
        return {"seed": job["seed"], "status": "ok", "reason": None}  # evaluation only: the main process's
    try:
        return _evaluate_sft(job, report) if job["arm"] == "sft" else _train_and_evaluate(job, report)
    except Exception as e:  # one failed run (e.g. out of memory) is recorded; the others go on
        record = failure(e, "ppo.rollout_chunk or ppo.micro_batch") | {"seed": job["seed"]}
    free_memory()  # outside the except block, where the failed run's frames are no longer held
    return record


def _evaluation_settings(profile: Profile) -> dict:
    p, e = profile.ppo, profile.eval
    return dict(max_new=p.max_new, temperature=p.temperature, seed=profile.seed,
                missing_eos_penalty=p.missing_eos_penalty, show=e.show_samples, kl_chunk=p.rollout_chunk)


def _evaluate_sft(job: dict, report) -> dict:
    profile, paths = job["profile"], job["paths"]
    trust = profile.base.trust_remote_code
    tokenizer = base_model.load_tokenizer(paths.sft_merged, trust_remote_code=trust)
    policy = base_model.load_causal_lm(paths.sft_merged, trust_remote_code=trust, device=resolve_device(profile))
    judge = evaluate.load_judge(job["judge"], trust_remote_code=trust, cpu_dtype=profile.rm.cpu_dtype)
    summary, rollouts, judged = evaluate.evaluate_policy(
        policy, tokenizer, job["prompts"], samples=profile.eval.samples, judge=judge, with_kl=False,
        **_evaluation_settings(profile))
    report(1, 2)
    cross = _cross_scores(profile, paths, job["scorers"], rollouts.first(profile.eval.cross_samples),
                          tokenizer.eos_token_id)
    report(2, 2)
    return {"status": "ok", "reason": None, **summary, "cross": cross, "judge_scores": judged}


def _train_and_evaluate(job: dict, report) -> dict:
    profile, paths, arm, seed = job["profile"], job["paths"], job["arm"], job["seed"]
    p, e, trust = profile.ppo, profile.eval, profile.base.trust_remote_code
    tokenizer = base_model.load_tokenizer(paths.sft_merged, trust_remote_code=trust)
    judge = evaluate.load_judge(job["judge"], trust_remote_code=trust, cpu_dtype=profile.rm.cpu_dtype)
    final, progress = {}, TrainThenEvaluate(report)

    def on_checkpoint(policy, step, reward):
        last = step == p.steps
        summary, rollouts, judged = evaluate.evaluate_policy(
            policy, tokenizer, job["prompts"], samples=e.samples if last else e.checkpoint_samples, judge=judge,
            proxy=reward, with_kl=True, **_evaluation_settings(profile))
        if last:
            final.update(summary=summary, rollouts=rollouts, judged=judged)
        return {k: v for k, v in summary.items() if not k.endswith("_per_prompt") and k != "samples"}

    with atomic_folder(paths.policy(arm, seed)) as written:
        run = train_ppo(paths.data_file("train"), sft_path=str(paths.sft_merged), rm_path=paths.rm(arm, job["rm_seed"]),
                        out_dir=written, profile=profile, ppo_batch=p.ppo_batch, ppo_epochs=p.ppo_epochs,
                        max_new=p.max_new, ppo_lr=p.ppo_lr, clip=p.clip, kl_coef=p.kl_coef, mini_batch=p.mini_batch,
                        micro_batch=p.micro_batch, rollout_chunk=p.rollout_chunk, lr_scheduler=p.lr_scheduler,
                        missing_eos_penalty=p.missing_eos_penalty, steps=p.steps, temperature=p.temperature,
                        lora_r=p.lora_r, lora_alpha=p.lora_alpha, target_modules=p.target_modules, seed=seed,
                        eval_steps=evaluate.checkpoint_steps(p.steps, e.checkpoints),
                        on_checkpoint=on_checkpoint if distributed.is_main() else None, on_update=progress)
    if not distributed.is_main():
        return {"seed": seed, "status": "ok", "reason": None}  # evaluation and records are the main process's
    precision = rm_models(profile)[model_id(arm, job["rm_seed"])]["precision"]
    same_seed = [mid for mid in job["scorers"] if mid.endswith(f"/seed{job['rm_seed']}")]
    cross = _cross_scores(profile, paths, same_seed, final["rollouts"].first(e.cross_samples),
                          tokenizer.eos_token_id)
    progress.evaluated()
    record = to_json_ready({
        "seed": seed, "rm_seed": job["rm_seed"], "status": "ok", "reason": None, **final["summary"], "cross": cross,
        "judge_scores": final["judged"], "checkpoints": run["checkpoints"], "history": run["history"],
        "train_seconds": run["train_seconds"], "peak_memory_bytes": run["peak_memory"]["peak_bytes"],
        "peak_memory": run["peak_memory"], "memory": measured_vs_estimate(profile, f"ppo_{precision}",
                                                                         run["peak_memory"]),
        "reward_scoring_seconds": run["reward_scoring_seconds"], "reward_device": run["reward_device"],
        "reward_threads": run["reward_threads"], "reward_scored_tokens": run["reward_scored_tokens"],
        "reward_overlap": run["reward_overlap"],
        "reward_int8_matmul": run["reward_int8_matmul"], "reward_kernel": run["reward_kernel"],
        "policy_device": run["policy_device"]}
        | ({"ranks": run["ranks"]} if distributed.launched() else {}))
    # kept beside the adapter, so a rerun after an interruption does not train this run again (_policy_jobs)
    atomic_write_json(paths.policy(arm, seed) / RUN_FILE, {"key": job["key"], "record": record})
    return record


def _cross_scores(profile: Profile, paths: Paths, model_ids, rollouts, eos_token_id: int) -> dict:
    """Mean reward of the replies under each of the reward models `model_ids` (a row of the cross matrix)."""
    out = {}
    specs = rm_models(profile)
    for mid in model_ids:
        device = score_device(profile)
        model, _ = load_for_scoring(rm_path(paths, specs[mid]), trust_remote_code=profile.base.trust_remote_code,
                                    device=device, int8_cpu_matmul=profile.rm.int8_cpu_matmul,
                                    cpu_kernel=profile.rm.cpu_kernel, cpu_dtype=profile.rm.cpu_dtype)
        scores = evaluate.proxy_scores(CPURewardModel(model, device), rollouts, eos_token_id=eos_token_id,
                                       missing_eos_penalty=profile.ppo.missing_eos_penalty)
        out[mid] = sum(scores) / len(scores)
        ref = weakref.ref(model)
        del model
        collected(ref)
    return out


def _experiment_result(profile: Profile, paths: Paths, judge: dict, prompts, sft: dict, runs: dict, usable):
    e = profile.eval
    specs = rm_models(profile)
    result = experiment_result(
        judge, sft, runs, precisions={a: specs[model_id(a, profile.rm.seeds[0])]["precision"] for a in profile.arms},
        rm_seeds=list(profile.ppo_rm_seeds("bf16")), null=NULL_ARM if NULL_ARM in profile.arms else None,
        noisy=NOISY_ARM if NOISY_ARM in profile.arms else None, bootstrap=e.bootstrap, seed=profile.seed,
        eval_info={"prompts": len(prompts), "samples": e.samples, "checkpoint_samples": e.checkpoint_samples,
                   "checkpoint_steps": evaluate.checkpoint_steps(profile.ppo.steps, e.checkpoints),
                   "missing_eos_penalty": profile.ppo.missing_eos_penalty, "bootstrap": e.bootstrap})
    return result, {"seeds": [seed for _, _, seed in ppo_runs(profile)], "data_source": data_source_of(paths),
                    "timings": {f"{a}/{r['seed']}": r.get("train_seconds") for a, rs in runs.items() for r in rs},
                    "peak_memory": {a: rec.get("peak_memory_bytes_max") for a, rec in result["arms"].items()}}


# ------------------------------------------------------------------------------------------------- all stages
STAGES: dict[str, tuple[Stage, Callable]] = {"data": (DATA, run_data), "sft": (SFT, run_sft), "rm": (RM, run_rm),
                                             "bon": (BON, run_bon), "ppo": (PPO, run_ppo)}


def run(names, profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """Run the named stages in pipeline order; returns {name: result}."""
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    return {name: STAGES[name][1](profile, paths, force=force, progress=progress) for name in STAGES if name in names}
