"""The pipeline's stages, each read top to bottom in one place: data -> sft -> rm -> ppo.

Every stage goes through the one cycle in `cycle()`: the hash of the settings it depends on, reuse of a finished
run with the same hash, the computation, a manifest, validation against the result schema, and an atomic write of
its result file. The notebooks, the command line (`tinyrlhf run`) and the tests call the `run_*` functions here;
the modules they call (data, base_model, sft, reward, ppo, evaluate) are libraries that take explicit arguments and
never import this module.
"""

from __future__ import annotations

import logging
import time
import traceback
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import base_model, data, evaluate, schema
from .config import Paths, Profile, hh_dir, resolve_device, resolve_source
from .memory import measured_vs_estimate
from .ppo import PPOError, train_ppo
from .results import atomic_write_json, current_rss_bytes, data_source_of, manifest, read_json, to_json_ready
from .reward import PRECISION_FILE, RewardModelError, evaluate_reward_model, footprint_bytes, load_reward_model
from .reward import train_reward_model
from .runtime import collected, free_memory
from .sft import generate, heldout_loss, train_sft

log = logging.getLogger(__name__)

JUDGE = "bf16"  # the reward model every policy is judged by


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
           "one reward model per precision, evaluated on held-out pairs")
PPO = Stage("ppo", "ppo", ("data", "base", "sft", "rm", "ppo"), "04_PPO_Alignment",
            "PPO against each reward model per seed, evaluation, the quantization tax")


# ------------------------------------------------------------------------------------------------- the cycle
def _reusable(result_path: Path, config_hash: str, outputs) -> bool:
    """A previous run with the same settings finished: its result file and its outputs all exist."""
    if not result_path.exists() or not all(Path(p).exists() for p in outputs):
        return False
    try:
        return read_json(result_path).get("config_hash") == config_hash
    except (ValueError, OSError):
        return False


def cycle(stage: Stage, profile: Profile, paths: Paths, *, force: bool, compute: Callable[[], tuple[dict, dict]],
          outputs=(), hash_extra: str = "") -> dict:
    """config hash -> reuse -> compute -> manifest -> schema validation -> atomic write.

    `compute()` returns (result, manifest keywords: data_source, seeds, timings, peak_memory). The returned dict is
    what was written, plus "reused" (not written).
    """
    paths.make()
    config_hash = profile.section_hash(*stage.sections) + hash_extra
    result_path = paths.result(stage.kind)
    if not force and _reusable(result_path, config_hash, outputs):
        log.info("%s: reusing %s (same settings)", stage.name, result_path)
        return read_json(result_path) | {"reused": True}
    log.info("%s: %s", stage.name, stage.does)
    t0 = time.perf_counter()
    result, meta = compute()
    meta["timings"] = {"stage_seconds": time.perf_counter() - t0} | meta.get("timings", {})
    result = to_json_ready({"config_hash": config_hash} | result | {"manifest": manifest(profile, stage.name, **meta)})
    schema.validate(result, stage.kind, source=result_path)
    atomic_write_json(result_path, result)
    return result | {"reused": False}


def failure(e: BaseException) -> dict:
    """How a precision or seed that failed is recorded; the others go on."""
    free_memory()
    return {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-2000:]}


def tokenizer_path(profile: Profile, paths: Paths) -> str:
    """The base tokenizer: trained by the data stage on `cpu`, else the base model's own."""
    return str(paths.base) if base_model.is_scratch(profile) else profile.base.model


# ---------------------------------------------------------------------------------------------------- 01 data
def run_data(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """01: parse, validate, de-duplicate, split by prompt and length-filter; the three data files and stats."""
    source = resolve_source(profile)
    outputs = [paths.data_file(k) for k in ("train", "test", "sft")]
    if base_model.is_scratch(profile):
        outputs.append(paths.base / "tokenizer.json")  # trained here, so part of this stage's output
    return cycle(DATA, profile, paths, force=force, outputs=outputs,
                 hash_extra=f":{source}:{hh_dir() if source == 'local' else ''}",
                 compute=lambda: _prepare_data(profile, paths, source))


def _prepare_data(profile: Profile, paths: Paths, source: str):
    d = profile.data
    ######## Read and parse ########
    raw = data.load_source(source, subsets=d.subsets, synthetic_pairs=d.synthetic_pairs, seed=profile.seed,
                           hh_dir=hh_dir())
    pairs, report = data.parse_source(raw, d.max_skipped_share)

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
        tokenizer = base_model.load_tokenizer(profile.base.model, trust_remote_code=profile.base.trust_remote_code)
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
    return cycle(SFT, profile, paths, force=force, outputs=[paths.sft_merged / "config.json"],
                 compute=lambda: _fine_tune(profile, paths, force, progress))


def _fine_tune(profile: Profile, paths: Paths, force: bool, progress: bool):
    s, trust, device = profile.sft, profile.base.trust_remote_code, resolve_device(profile)
    ######## Base model (pre-trained here on the cpu profile) ########
    base_summary = build_base_model(profile, paths, force=force, progress=progress)
    init_path = base_model.base_model_path(profile, paths)
    tokenizer = base_model.load_tokenizer(tokenizer_path(profile, paths), trust_remote_code=trust)
    test_pairs = data.read_pairs(paths.data_file("test"))[: s.eval_pairs]
    prompts = [p.prompt for p in test_pairs[: s.sample_prompts]]
    max_new = profile.data.max_response_tokens

    ######## Before: held-out loss and greedy replies of the base model ########
    before, before_text = _loss_and_replies(init_path, tokenizer, test_pairs, prompts, max_new, trust, device)

    ######## LoRA SFT on prompt + chosen reply ########
    run = train_sft(paths.data_file("sft"), out_dir=paths.sft, init_path=init_path, tokenizer=tokenizer,
                    batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, accum=s.accum, warmup=s.warmup,
                    dropout=s.dropout, max_steps=s.max_steps, lora_r=s.lora_r, lora_alpha=s.lora_alpha,
                    target_modules=s.target_modules, gradient_checkpointing=s.gradient_checkpointing,
                    max_length=profile.data.max_prompt_tokens + profile.data.max_response_tokens + 1,
                    seed=profile.seed, profile=profile, progress=progress)

    ######## After ########
    after, after_text = _loss_and_replies(run["merged_dir"], tokenizer, test_pairs, prompts, max_new, trust, device)
    result = {
        "base_model": profile.base.model,
        "base_pretraining": {k: v for k, v in base_summary.items() if k != "config_hash"},
        "before": before, "after": after, "loss_drop": before["loss"] - after["loss"],
        "loss_curve": run["loss_curve"], "train_seconds": run["train_seconds"],
        "peak_memory_bytes": run["peak_memory"]["peak_bytes"],
        "memory": measured_vs_estimate(profile, "sft", run["peak_memory"]),
        "trainable_parameters": run["trainable_parameters"], "total_parameters": run["total_parameters"],
        "generations": [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before_text, after_text)],
        "artifacts": {"adapter": run["adapter_dir"], "merged": run["merged_dir"]},
    }
    return result, {"data_source": data_source_of(paths), "timings": {"train_seconds": run["train_seconds"]},
                    "peak_memory": run["peak_memory"]}


def _loss_and_replies(model_path, tokenizer, pairs, prompts, max_new: int, trust: bool, device: str):
    model = base_model.load_causal_lm(model_path, trust_remote_code=trust, device=device)
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
    config_hash = profile.section_hash("data", "base")
    if not force and _reusable(summary_path, config_hash, [paths.base / "model.safetensors"]):
        return read_json(summary_path) | {"reused": True}
    tok = base_model.load_tokenizer(paths.base)
    texts = base_model.dialogue_texts(data.read_pairs(paths.data_file("train")), tok.eos_token)
    summary = base_model.pretrain(texts, tok, out_dir=paths.base, settings=profile.base, seed=profile.seed,
                                  max_len=profile.data.max_prompt_tokens + profile.data.max_response_tokens,
                                  progress=progress)
    atomic_write_json(summary_path, {"config_hash": config_hash} | summary)
    return {"config_hash": config_hash} | summary | {"reused": False}


# ------------------------------------------------------------------------------------------- 03 reward models
def run_rm(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """03: one reward model per precision from the SFT model; a precision that fails is recorded, the rest go on."""
    required = [paths.rm(p) / PRECISION_FILE for p in profile.rm.precisions]
    return cycle(RM, profile, paths, force=force, outputs=required,
                 compute=lambda: _reward_models(profile, paths, progress))


def _reward_models(profile: Profile, paths: Paths, progress: bool):
    if not (paths.sft_merged / "config.json").exists():
        raise RewardModelError(f"no SFT model in {paths.sft_merged}: run 02_SFT_Finetuning first")
    tokenizer = base_model.load_tokenizer(paths.sft_merged, trust_remote_code=profile.base.trust_remote_code)
    test_pairs = data.read_pairs(paths.data_file("test"))[: profile.rm.eval_pairs]
    precisions, reference = {}, None
    for precision in profile.rm.precisions:
        try:
            rec, ev = _train_and_evaluate_rm(profile, paths, precision, tokenizer, test_pairs, reference, progress)
            reference = ev if precision == "bf16" else reference
        except Exception as e:  # one precision failing (e.g. out of memory) must not stop the others
            rec = failure(e)
        precisions[precision] = rec
    return {"precisions": precisions}, {
        "data_source": data_source_of(paths),
        "timings": {p: r.get("train_seconds") for p, r in precisions.items()},
        "peak_memory": {p: r.get("peak_memory_bytes") for p, r in precisions.items()}}


def _train_and_evaluate_rm(profile: Profile, paths: Paths, precision: str, tokenizer, test_pairs, reference,
                           progress: bool) -> tuple[dict, dict]:
    r = profile.rm
    run = train_reward_model(
        paths.data_file("train"), init_path=str(paths.sft_merged), tokenizer=tokenizer, precision=precision,
        out_dir=paths.rm(precision), batch_size=r.batch_size, lr=r.lr, epochs=r.epochs, accum=r.accum,
        warmup=r.warmup, max_steps=r.max_steps, lora_r=r.lora_r, lora_alpha=r.lora_alpha,
        lora_dropout=r.lora_dropout, target_modules=r.target_modules, double_quant=r.double_quant,
        max_length=profile.data.max_prompt_tokens + profile.data.max_response_tokens + 1, seed=profile.seed,
        profile=profile, progress=progress)
    free_memory()
    # Evaluate the model as saved: this also proves it reloads at its precision. Scored on CPU, where PPO scores.
    model, _ = load_reward_model(paths.rm(precision), trust_remote_code=profile.base.trust_remote_code, device="cpu")
    ev = evaluate_reward_model(model, tokenizer, test_pairs, reference=reference)
    bf16 = 1.0 if precision == "bf16" else None
    rec = {"status": "ok", "reason": None, "accuracy": ev["accuracy"], "accuracy_ci95": ev["accuracy_ci95"],
           "mean_margin": ev["mean_margin"], "n_test_pairs": ev["n_test_pairs"],
           "agreement_with_bf16": ev.get("agreement_with_bf16", bf16),
           "rank_correlation_with_bf16": ev.get("rank_correlation_with_bf16", bf16),
           "footprint_bytes": footprint_bytes(model), "train_seconds": run["train_seconds"],
           "peak_memory_bytes": run["peak_memory"]["peak_bytes"], "peak_memory": run["peak_memory"],
           "memory": measured_vs_estimate(profile, f"rm_{precision}", run["peak_memory"]),
           "throughput_pairs_per_s": ev["throughput_pairs_per_s"], "compute_dtype": run["compute_dtype"],
           "trainable_parameters": run["trainable_parameters"],
           "loss_curve": [h["loss"] for h in run["loss_curve"]]}
    ref = weakref.ref(model)
    del model
    rec["released"] = collected(ref)
    rec["rss_after_release_bytes"] = current_rss_bytes()
    return rec, ev


# ------------------------------------------------------------------------------------------------------ 04 PPO
def run_ppo(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """04: PPO against each reward model for every seed, every policy evaluated under every reward model."""
    required = [paths.policy(p, s) / "adapter_config.json" for p in profile.rm.precisions for s in profile.ppo.seeds]
    return cycle(PPO, profile, paths, force=force, outputs=required, compute=lambda: _experiment(profile, paths,
                                                                                                progress))


def _experiment(profile: Profile, paths: Paths, progress: bool):
    p, trust = profile.ppo, profile.base.trust_remote_code
    ######## Inputs: the SFT policy, the reward models that finished, the evaluation prompts ########
    if not (paths.sft_merged / "config.json").exists():
        raise PPOError(f"no SFT model in {paths.sft_merged}: run 02_SFT_Finetuning first")
    rm_results = read_json(paths.result("rm"))["precisions"]
    wanted = list(profile.rm.precisions)
    usable = [x for x in wanted if rm_results.get(x, {}).get("status") == "ok"]
    if JUDGE not in usable:
        raise PPOError("the bf16 reward model is missing or failed: it is the judge and the value model's start; "
                       "rerun 03_Reward_Modeling")
    prompts = eval_prompts(profile, paths)
    sample = dict(max_new=p.max_new, temperature=p.temperature, seed=profile.seed)

    ######## The SFT policy's replies: the reference of every gain ########
    tokenizer = base_model.load_tokenizer(paths.sft_merged, trust_remote_code=trust)
    sft_model = base_model.load_causal_lm(paths.sft_merged, trust_remote_code=trust, device=resolve_device(profile))
    outputs = {"sft": evaluate.policy_outputs(sft_model, tokenizer, prompts, with_kl=False, **sample)}
    del sft_model
    free_memory()

    ######## One PPO run per precision and seed, sampled at once ########
    runs = {x: [] for x in wanted}
    for precision in wanted:
        for seed in p.seeds:
            rec = {"seed": seed, "status": "failed", "reason": None}
            if precision not in usable:
                rec["reason"] = f"reward model {precision} failed in 03: {rm_results.get(precision, {}).get('reason')}"
            else:
                rec = _train_and_sample(profile, paths, precision, seed, prompts, outputs, progress)
            runs[precision].append(rec)

    ######## Every reply under every reward model, then the aggregates ########
    scores = evaluate.score_outputs({x: paths.rm(x) for x in usable}, prompts, outputs, trust_remote_code=trust)
    for precision, seed_runs in runs.items():
        for rec in (r for r in seed_runs if r["status"] == "ok"):
            key = f"{precision}/{rec['seed']}"
            rec.update(evaluate.seed_metrics(prompts, outputs[key], scores[key], judge=JUDGE, own=precision,
                                             sft_judged=scores["sft"][JUDGE], samples=p.sample_responses))
    return _experiment_result(profile, paths, prompts, outputs, scores, runs, usable)


def _train_and_sample(profile: Profile, paths: Paths, precision: str, seed: int, prompts, outputs: dict,
                      progress: bool) -> dict:
    """One PPO run, then its policy's replies to the evaluation prompts (into `outputs`); a failure is recorded."""
    p = profile.ppo
    rec = {"seed": seed, "status": "failed", "reason": None}
    try:
        run = train_ppo(paths.data_file("train"), sft_path=str(paths.sft_merged), rm_path=paths.rm(precision),
                        value_rm_path=paths.rm("bf16"), out_dir=paths.policy(precision, seed), profile=profile,
                        ppo_batch=p.ppo_batch, ppo_epochs=p.ppo_epochs, max_new=p.max_new, ppo_lr=p.ppo_lr,
                        clip=p.clip, kl_coef=p.kl_coef, mini_batch=p.mini_batch, steps=p.steps,
                        temperature=p.temperature, lora_r=p.lora_r, lora_alpha=p.lora_alpha,
                        target_modules=p.target_modules, seed=seed, progress=progress)
        policy = run.pop("policy")
        outputs[f"{precision}/{seed}"] = evaluate.policy_outputs(
            policy, run.pop("tokenizer"), prompts, max_new=p.max_new, temperature=p.temperature, seed=profile.seed,
            with_kl=True)
        ref = weakref.ref(policy)
        del policy
        rec.update(status="ok", history=run["history"], train_seconds=run["train_seconds"],
                   peak_memory_bytes=run["peak_memory"]["peak_bytes"], peak_memory=run["peak_memory"],
                   memory=measured_vs_estimate(profile, f"ppo_{precision}", run["peak_memory"]),
                   reward_scoring_seconds=run["reward_scoring_seconds"], reward_device=run["reward_device"],
                   policy_device=run["policy_device"], released=collected(ref),
                   rss_after_release_bytes=current_rss_bytes())
    except Exception as e:  # one failed run (e.g. out of memory) is recorded; the others go on
        rec.update(failure(e), seed=seed)
    return rec


def _experiment_result(profile: Profile, paths: Paths, prompts, outputs, scores, runs, usable):
    sft_mean, sft_std, _ = evaluate.mean_std_ci(scores["sft"][JUDGE])
    precisions = evaluate.aggregate(runs, sft_mean)
    wanted = list(profile.rm.precisions)
    result = {
        "judge": JUDGE,
        "eval_prompts": len(prompts),
        "sft": {"judged_reward_mean": sft_mean, "judged_reward_std": sft_std,
                "response_length_mean": evaluate.mean(outputs["sft"]["lengths"]),
                "samples": evaluate.samples_of(prompts, outputs["sft"], scores["sft"][JUDGE],
                                             profile.ppo.sample_responses)},
        "precisions": precisions,
        "cross_matrix": evaluate.cross_matrix(scores, ["sft"] + wanted, profile.ppo.seeds, wanted, usable),
    }
    return result, {"seeds": profile.ppo.seeds, "data_source": data_source_of(paths),
                    "timings": {f"{x}/{r['seed']}": r.get("train_seconds") for x, rs in runs.items() for r in rs},
                    "peak_memory": {x: rec.get("peak_memory_bytes_max") for x, rec in precisions.items()}}


def eval_prompts(profile: Profile, paths: Paths) -> list[str]:
    pairs = data.read_pairs(paths.data_file("test"))
    return sorted({p.prompt for p in pairs})[: profile.ppo.eval_prompts]


# ------------------------------------------------------------------------------------------------- all stages
STAGES: dict[str, tuple[Stage, Callable]] = {"data": (DATA, run_data), "sft": (SFT, run_sft), "rm": (RM, run_rm),
                                             "ppo": (PPO, run_ppo)}


def run(names, profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """Run the named stages in pipeline order; returns {name: result}."""
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    return {name: STAGES[name][1](profile, paths, force=force, progress=progress) for name in STAGES if name in names}
