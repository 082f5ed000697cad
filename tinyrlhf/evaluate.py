"""Evaluation of the SFT and PPO policies on held-out prompts, and the statistics of the quantization tax. A library:
the experiment that runs PPO and calls these is the ppo stage in stages.py.

Every policy answers the same prompts with the same sampling seed; every answer is scored by every reward model
(the cross matrix). The bf16 reward model is the common judge. The quantization tax of a precision is how much
of bf16's judged gain over SFT it loses, with a 95% interval across seeds.
"""

from __future__ import annotations

import math
import weakref

from .reward import load_reward_model, score_texts
from .runtime import collected

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


def mean(v):
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


def policy_outputs(policy, tokenizer, prompts: list[str], *, max_new: int, temperature: float, seed: int,
                   with_kl: bool) -> dict:
    """Sampled replies (seeded with `seed` + EVAL_SEED_OFFSET, the same for every policy), their token lengths
    and, for a PPO policy, their KL to the reference."""
    texts, ids = sample_responses(policy, tokenizer, prompts, max_new=max_new, temperature=temperature,
                                  seed=seed + EVAL_SEED_OFFSET)
    return {"responses": texts, "lengths": [len(r) for r in ids],
            "kl": sequence_kl(policy, tokenizer, prompts, ids) if with_kl else [0.0] * len(ids)}


def score_outputs(rm_paths: dict, prompts: list[str], outputs: dict, *, trust_remote_code: bool = False) -> dict:
    """scores[policy_key][rm_precision] = list of rewards; each RM (precision -> folder in `rm_paths`) is loaded
    once, on CPU, in eval mode."""
    scores = {key: {} for key in outputs}
    for precision, path in rm_paths.items():
        rm, info = load_reward_model(path, trust_remote_code=trust_remote_code, device="cpu")
        for key, out in outputs.items():
            scores[key][precision] = score_texts(rm, info["tokenizer"], prompts, out["responses"])
        ref = weakref.ref(rm)
        del rm, info
        assert collected(ref), f"the {precision} reward model was not released"
    return scores


# ----------------------------------------------------------------------------------------- experiment
def _win_rate(a: list[float], b: list[float]) -> float:
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def samples_of(prompts, out, judged, k):
    return [{"prompt": prompts[i], "response": out["responses"][i], "judged_reward": judged[i]} for i in range(k)]


def aggregate(precision_runs: dict, sft_judged_mean: float) -> dict:
    """Per-precision aggregates over finished seeds, and the tax relative to bf16 (paired by seed)."""
    out = {}
    for precision, runs in precision_runs.items():
        ok = [r for r in runs if r["status"] == "ok"]
        rec = {"seeds": runs, "status": "ok" if ok and len(ok) == len(runs) else "partial" if ok else "failed",
               "reason": None if len(ok) == len(runs) else "; ".join(
                   f"seed {r['seed']}: {r['reason']}" for r in runs if r["status"] != "ok")}
        judged, std, ci = mean_std_ci([r["judged_reward_mean"] for r in ok])
        rec.update({"judged_reward_mean": judged, "judged_reward_std": std, "judged_reward_ci95": ci,
                    "own_reward_mean": mean([r["own_reward_mean"] for r in ok]),
                    "gain_vs_sft": None if judged is None else judged - sft_judged_mean,
                    "kl_mean": mean([r["kl_mean"] for r in ok]),
                    "win_rate_vs_sft": mean([r["win_rate_vs_sft"] for r in ok]),
                    "response_length_mean": mean([r["response_length_mean"] for r in ok]),
                    "train_seconds_mean": mean([r["train_seconds"] for r in ok]),
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


def seed_metrics(prompts: list[str], out: dict, scores: dict, *, judge: str, own: str, sft_judged: list[float],
                 samples: int) -> dict:
    """What one finished PPO run records from its evaluation: judged and own reward, KL, win rate, length,
    a few samples."""
    judged = scores[judge]
    return {"judged_reward_mean": mean(judged), "own_reward_mean": mean(scores[own]), "kl_mean": mean(out["kl"]),
            "win_rate_vs_sft": _win_rate(judged, sft_judged), "response_length_mean": mean(out["lengths"]),
            "samples": samples_of(prompts, out, judged, samples)}


def cross_matrix(scores: dict, policies: list[str], seeds, judges: list[str], usable: list[str]) -> dict:
    """Mean reward of every policy (SFT, then each precision's PPO runs averaged over seeds) under every judge."""
    matrix = []
    for pol in policies:
        keys = ["sft"] if pol == "sft" else [f"{pol}/{s}" for s in seeds if f"{pol}/{s}" in scores]
        matrix.append([mean([mean(scores[key][j]) for key in keys]) if keys and j in usable else None
                       for j in judges])
    return {"policies": policies, "judges": judges, "mean_reward": matrix}
