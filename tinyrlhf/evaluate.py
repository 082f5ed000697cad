"""Evaluation of the SFT and PPO policies on held-out prompts, and the quantization-tax experiment.

Every policy answers the same prompts with the same sampling seed; every answer is scored by every reward model
(the cross matrix). The bf16 reward model is the common judge. The quantization tax of a precision is how much
of bf16's judged gain over SFT it loses, with a 95% interval across seeds.
"""

from __future__ import annotations

import math
import time
import traceback
import weakref

from .config import Paths, Profile, resolve_device
from .memory import measured_vs_estimate
from .results import (atomic_write_json, current_rss_bytes, data_source_of, manifest, read_json, reusable)
from .runtime import free_memory

JUDGE = "bf16"
EVAL_SEED_OFFSET = 10_000  # evaluation sampling uses its own seed, the same for every policy
# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (a table, so no scipy dependency).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def mean_std_ci(values: list[float]) -> tuple[float | None, float | None, list | None]:
    """Mean, sample standard deviation and 95% t-interval of the mean; no spread from a single value."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = (T975[n - 2] if n - 1 <= len(T975) else 1.96) * std / math.sqrt(n)
    return mean, std, [mean - half, mean + half]


def _mean(v):
    return sum(v) / len(v) if v else None


# ------------------------------------------------------------------------------------------- policies
def sample_responses(model, tokenizer, prompts: list[str], *, max_new: int, temperature: float, seed: int,
                     batch_size: int = 16) -> tuple[list[str], list[list[int]]]:
    """Sampled replies (as in PPO's rollouts), cut after the end-of-sequence token; also their token ids."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    texts, ids_out = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i: i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            gen = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            for row in gen[:, enc["input_ids"].shape[1]:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id) + 1]
                row = [t for t in row if t != tokenizer.pad_token_id]
                ids_out.append(row)
                texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts, ids_out


def _response_logprob(model, ids, n_prompt: int):
    """log p(response | prompt) of one sequence whose first `n_prompt` tokens are the prompt."""
    import torch

    logits = model(input_ids=ids).logits[0, n_prompt - 1: -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, n_prompt:, None]).sum()


def sequence_kl(policy, tokenizer, prompts: list[str], responses: list[list[int]]) -> list[float]:
    """Per-response log pi(y|x) - log pi_ref(y|x), summed over the response's tokens; the reference is the same
    model with its LoRA adapter disabled. Averaged over samples from pi it estimates KL(pi || ref)."""
    import torch

    device = next(policy.parameters()).device
    out = []
    policy.eval()
    with torch.no_grad():
        for prompt, resp in zip(prompts, responses):
            if not resp:
                out.append(0.0)
                continue
            p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + resp], device=device)
            lp = _response_logprob(policy, ids, len(p_ids))
            with policy.disable_adapter():
                ref = _response_logprob(policy, ids, len(p_ids))
            out.append(float(lp - ref))
    return out


def policy_outputs(policy, tokenizer, prompts: list[str], profile: Profile, *, with_kl: bool) -> dict:
    p = profile.ppo
    texts, ids = sample_responses(policy, tokenizer, prompts, max_new=p.max_new, temperature=p.temperature,
                                  seed=profile.seed + EVAL_SEED_OFFSET)
    return {"responses": texts, "lengths": [len(r) for r in ids],
            "kl": sequence_kl(policy, tokenizer, prompts, ids) if with_kl else [0.0] * len(ids)}


def score_outputs(profile: Profile, paths: Paths, precisions: list[str], prompts: list[str],
                  outputs: dict) -> dict:
    """scores[policy_key][rm_precision] = list of rewards; each RM is loaded once, on CPU, in eval mode."""
    from .reward import load_reward_model, rm_dir, score_texts

    scores = {key: {} for key in outputs}
    for precision in precisions:
        rm, info = load_reward_model(rm_dir(paths, precision), profile=profile, device="cpu")
        for key, out in outputs.items():
            scores[key][precision] = score_texts(rm, info["tokenizer"], prompts, out["responses"])
        alive = weakref.ref(rm)
        del rm, info
        free_memory()
        assert alive() is None, f"the {precision} reward model was not released"
    return scores


# ----------------------------------------------------------------------------------------- experiment
def _win_rate(a: list[float], b: list[float]) -> float:
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def _samples(prompts, out, judged, k):
    return [{"prompt": prompts[i], "response": out["responses"][i], "judged_reward": judged[i]} for i in range(k)]


def aggregate(precision_runs: dict, sft_judged_mean: float) -> dict:
    """Per-precision aggregates over finished seeds, and the tax relative to bf16 (paired by seed)."""
    out = {}
    for precision, runs in precision_runs.items():
        ok = [r for r in runs if r["status"] == "ok"]
        rec = {"seeds": runs, "status": "ok" if ok and len(ok) == len(runs) else "partial" if ok else "failed",
               "reason": None if len(ok) == len(runs) else "; ".join(
                   f"seed {r['seed']}: {r['reason']}" for r in runs if r["status"] != "ok")}
        mean, std, ci = mean_std_ci([r["judged_reward_mean"] for r in ok])
        rec.update({"judged_reward_mean": mean, "judged_reward_std": std, "judged_reward_ci95": ci,
                    "own_reward_mean": _mean([r["own_reward_mean"] for r in ok]),
                    "gain_vs_sft": None if mean is None else mean - sft_judged_mean,
                    "kl_mean": _mean([r["kl_mean"] for r in ok]),
                    "win_rate_vs_sft": _mean([r["win_rate_vs_sft"] for r in ok]),
                    "response_length_mean": _mean([r["response_length_mean"] for r in ok]),
                    "train_seconds_mean": _mean([r["train_seconds"] for r in ok]),
                    "peak_memory_bytes_max": max((r["peak_memory_bytes"] for r in ok), default=None)})
        out[precision] = rec
    ref = out.get(JUDGE)
    ref_ok = ref is not None and ref["gain_vs_sft"] not in (None, 0)
    for rec in out.values():
        rec["tax_vs_bf16"] = rec["tax_vs_bf16_ci95"] = None
        if not ref_ok or rec["gain_vs_sft"] is None:
            continue
        scale = abs(ref["gain_vs_sft"])
        rec["tax_vs_bf16"] = (ref["gain_vs_sft"] - rec["gain_vs_sft"]) / scale
        ref_by_seed = {r["seed"]: r["judged_reward_mean"] for r in ref["seeds"] if r["status"] == "ok"}
        paired = [(ref_by_seed[r["seed"]] - r["judged_reward_mean"]) / scale
                  for r in rec["seeds"] if r["status"] == "ok" and r["seed"] in ref_by_seed]
        rec["tax_vs_bf16_ci95"] = mean_std_ci(paired)[2]
    return out


def run_experiments(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """One PPO run per RM precision and seed, evaluated; writes results/ppo_experiment_results.json."""
    from .base_model import load_tokenizer
    from .ppo import PPOError, eval_prompts, policy_dir, run_one
    from .sft import sft_dirs

    result_path = paths.results / "ppo_experiment_results.json"
    config_hash = profile.section_hash("data", "base", "sft", "rm", "ppo")
    precisions_wanted = list(profile.rm.precisions)
    required = [policy_dir(paths, p, s) / "adapter_config.json" for p in precisions_wanted for s in profile.ppo.seeds]
    if not force and reusable(result_path, config_hash, required):
        return read_json(result_path) | {"reused": True}

    rm_results = read_json(paths.results / "rm_results.json")["precisions"]
    usable = [p for p in precisions_wanted if rm_results.get(p, {}).get("status") == "ok"]
    if JUDGE not in usable:
        raise PPOError("the bf16 reward model is missing or failed: it is the judge and the value model's start; "
                       "rerun 03_Reward_Modeling")
    prompts = eval_prompts(profile, paths)
    device = resolve_device(profile)
    t_start = time.perf_counter()

    from transformers import AutoModelForCausalLM

    sft_path = sft_dirs(paths)["merged"]
    tokenizer = load_tokenizer(profile, paths, path=sft_path)
    sft_model = AutoModelForCausalLM.from_pretrained(sft_path).to(device)
    outputs = {"sft": policy_outputs(sft_model, tokenizer, prompts, profile, with_kl=False)}
    del sft_model
    free_memory()

    runs: dict[str, list[dict]] = {p: [] for p in precisions_wanted}
    for precision in precisions_wanted:
        for seed in profile.ppo.seeds:
            rec = {"seed": seed, "status": "failed", "reason": None}
            if precision not in usable:
                rec["reason"] = f"reward model {precision} failed in 03: {rm_results.get(precision, {}).get('reason')}"
                runs[precision].append(rec)
                continue
            try:
                run = run_one(profile, paths, precision, seed, progress=progress)
                policy = run.pop("policy")
                outputs[f"{precision}/{seed}"] = policy_outputs(policy, run.pop("tokenizer"), prompts, profile,
                                                                with_kl=True)
                alive = weakref.ref(policy)
                del policy
                free_memory()
                rec.update(status="ok", history=run["history"], train_seconds=run["train_seconds"],
                           peak_memory_bytes=run["peak_memory"]["peak_bytes"], peak_memory=run["peak_memory"],
                           memory=measured_vs_estimate(profile, f"ppo_{precision}", run["peak_memory"]),
                           reward_scoring_seconds=run["reward_scoring_seconds"], reward_device=run["reward_device"],
                           policy_device=run["policy_device"], released=alive() is None,
                           rss_after_release_bytes=current_rss_bytes())
            except Exception as e:  # one failed run (e.g. out of memory) is recorded; the others go on
                free_memory()
                rec.update(reason=f"{type(e).__name__}: {e}"[:500], traceback=traceback.format_exc()[-2000:])
            runs[precision].append(rec)

    scores = score_outputs(profile, paths, usable, prompts, outputs)
    sft_judged = scores["sft"][JUDGE]
    k = profile.ppo.sample_responses
    for precision, seed_runs in runs.items():
        for rec in seed_runs:
            key = f"{precision}/{rec['seed']}"
            if rec["status"] != "ok":
                continue
            judged, out = scores[key][JUDGE], outputs[key]
            rec.update(judged_reward_mean=_mean(judged), own_reward_mean=_mean(scores[key][precision]),
                       kl_mean=_mean(out["kl"]), win_rate_vs_sft=_win_rate(judged, sft_judged),
                       response_length_mean=_mean(out["lengths"]), samples=_samples(prompts, out, judged, k))
    sft_mean, sft_std, _ = mean_std_ci(sft_judged)
    precisions = aggregate(runs, sft_mean)

    policies = ["sft"] + precisions_wanted
    matrix = []
    for pol in policies:
        keys = ["sft"] if pol == "sft" else [f"{pol}/{s}" for s in profile.ppo.seeds if f"{pol}/{s}" in scores]
        matrix.append([_mean([_mean(scores[key][j]) for key in keys]) if keys and j in usable else None
                       for j in precisions_wanted])
    result = {
        "config_hash": config_hash,
        "judge": JUDGE,
        "eval_prompts": len(prompts),
        "sft": {"judged_reward_mean": sft_mean, "judged_reward_std": sft_std,
                "response_length_mean": _mean(outputs["sft"]["lengths"]),
                "samples": _samples(prompts, outputs["sft"], sft_judged, k)},
        "precisions": precisions,
        "cross_matrix": {"policies": policies, "judges": precisions_wanted, "mean_reward": matrix},
    }
    result["manifest"] = manifest(
        profile, "ppo", seeds=profile.ppo.seeds, data_source=data_source_of(paths),
        timings={"stage_seconds": time.perf_counter() - t_start} | {
            f"{p}/{r['seed']}": r.get("train_seconds") for p, rs in runs.items() for r in rs},
        peak_memory={p: rec.get("peak_memory_bytes_max") for p, rec in precisions.items()})
    atomic_write_json(result_path, result)
    return result | {"reused": False}
