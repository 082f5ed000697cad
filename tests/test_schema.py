"""Result-file schemas: realistic results pass, broken ones fail with the JSON path of the problem.

The builders here (make_rm_results, make_ppo_results, ...) are also the fixtures of test_plots.py: small,
generated in memory, shaped like what the stages write (3 precisions x 2 seeds, with training history).
"""

from __future__ import annotations

import copy
import json
import random

import jsonschema
import pytest

from tinyrlhf.results import to_json_ready
from tinyrlhf.schema import SCHEMAS, SchemaError, validate, validate_file

PRECISIONS = ("bf16", "int8", "int4")
ARMS = (*PRECISIONS, "null", "noisy")
SEEDS = (0, 1, 2)  # reward-model seeds
PROMPTS = 6
MIB = 2**20


def make_manifest(stage: str) -> dict:
    return {"stage": stage, "created_unix": 1.7e9, "profile": "cpu", "config": {"name": "cpu", "seed": 0},
            "seeds": list(SEEDS), "packages": {"python": "3.11.9", "torch": "2.13.0", "trl": "1.12.0"},
            "git_commit": None, "hardware": {"cuda": False, "cpu_count": 2}, "timings": {"total": 12.5},
            "peak_memory": {"peak_bytes": 900 * MIB}, "data_source": {"source": "synthetic"}}


def _fail(entry: dict, reason: str,
          keep=("status", "reason", "arm", "seed", "precision", "train_seed", "label_noise")) -> dict:
    """A failed run as the writers store it: metrics null."""
    return {k: (v if k in keep else None) for k, v in entry.items()} | {"status": "failed", "reason": reason}


def _rm_model(arm: str, i: int, seed: int) -> dict:
    a = {"bf16": 0.83, "int8": 0.81, "int4": 0.74, "null": 0.82, "noisy": 0.66}[arm] + 0.02 * (seed - 1)
    footprint = {"bf16": 48 * MIB, "int8": 27 * MIB, "int4": 17 * MIB, "null": 48 * MIB, "noisy": 48 * MIB}
    by_category = {c: {"n": 60, "accuracy": min(1.0, a + d), "accuracy_ci95": [max(0.0, a + d - 0.1),
                                                                               min(1.0, a + d + 0.08)]}
                   for c, d in (("rude", 0.15), ("off_topic", -0.2), ("harmful", 0.1))}
    entry = {"status": "ok", "reason": None, "arm": arm, "precision": arm if arm in PRECISIONS else "bf16",
             "seed": seed, "train_seed": seed + (1000 if arm == "null" else 0),
             "label_noise": 0.25 if arm == "noisy" else 0.0, "flipped_pairs": 300 if arm == "noisy" else 0,
             "accuracy": a, "accuracy_ci95": [a - 0.05, a + 0.05], "by_category": by_category,
             "mean_margin": 1.2 - 0.3 * i, "agreement_with_bf16": 1.0 - 0.06 * i,
             "rank_correlation_with_bf16": 1.0 - 0.1 * i,
             "mcnemar_vs_bf16": None if arm == "bf16" else {"only_first_right": 9, "only_second_right": 3 + i,
                                                            "p_value": 0.2 + 0.1 * i},
             "footprint_bytes": footprint[arm], "train_seconds": 60.0 + 25 * i,
             "peak_memory_bytes": (700 - 100 * i) * MIB, "throughput_pairs_per_s": 40.0 - 8 * i,
             "compute_dtype": "float32", "loss_curve": [0.69 * 0.95**k + 0.02 * i for k in range(30)],
             "n_test_pairs": 300, "cpu_kernel": {"kernel": "dense", "dtype": "float32", "why": "fits"}}
    if arm == "int8" and seed == SEEDS[0]:
        entry["cpu_kernel_check"] = {"used": "dense", "accuracy": 0.81, "pairs_per_s": 160.0, "mean_abs_margin": 5.0,
                                     "others": {"bitsandbytes llm.int8": {
                                         "same_order": 1.0, "max_abs_score_difference": 0.12, "accuracy": 0.81,
                                         "pairs_per_s": 110.0}}}
    return entry


def make_rm_results(failed: dict[str, str] | None = None) -> dict:
    """rm_results.json from the stage's own summary (reward.seed_summary); `failed` maps "arm/seedS" -> reason for
    reward models that failed."""
    from tinyrlhf.reward import seed_summary

    failed = failed or {}
    models = {}
    for i, arm in enumerate(ARMS):
        for seed in SEEDS:
            mid = f"{arm}/seed{seed}"
            entry = _rm_model(arm, i, seed)
            models[mid] = _fail(entry, failed[mid]) if mid in failed else entry
    arms = {arm: seed_summary([models[f"{arm}/seed{s}"] for s in SEEDS]) for arm in ARMS}
    return to_json_ready({"config_hash": "abc123", "manifest": make_manifest("rm"), "models": models, "arms": arms,
                          "seeds": list(SEEDS), "null_arm": "null", "noisy_arm": "noisy", "label_noise": 0.25,
                          "judge_arm": None})


def _history(rng: random.Random, level: float, steps: int = 12) -> list[dict]:
    rows, seconds = [], 0.0
    for step in range(1, steps + 1):
        seconds += 2.0 + rng.random()
        progress = (step - 1) / (steps - 1)
        rows.append({"step": step, "reward": level * progress + rng.gauss(0, 0.05), "kl": 0.4 * progress**1.5,
                     "entropy": 2.5 - 0.5 * progress, "policy_loss": -0.02 + rng.gauss(0, 0.01),
                     "value_loss": 0.3 * (1 - progress) + 0.05, "clipfrac": 0.1 * rng.random(),
                     "seconds": seconds})
    return rows


def _samples(rng: random.Random, n: int = 3) -> list[dict]:
    return [{"prompt": f"Human: question {k}?", "response": f"Assistant: answer {k}.",
             "judged_reward": rng.gauss(0.5, 0.2), "ended": k != 2} for k in range(n)]


def _evaluation(rng: random.Random, level: float, *, prompts: int = PROMPTS, samples: int = 4) -> dict:
    judged = [level + rng.gauss(0, 0.4) for _ in range(prompts * samples)]
    per_prompt = [sum(judged[i: i + samples]) / samples for i in range(0, len(judged), samples)]
    return {"status": "ok", "reason": None, "judge_mean": sum(judged) / len(judged), "judge_per_prompt": per_prompt,
            "judge_scores": judged, "eos_share": 0.95, "length_mean": 30.0, "samples": _samples(rng),
            "cross": {f"{arm}/seed{s}": level + 0.2 + 0.05 * j for j, arm in enumerate(ARMS) for s in SEEDS}}


def _run(arm: str, rm_seed: int, level: float) -> dict:
    rng = random.Random(f"{arm}-{rm_seed}")
    ev = _evaluation(rng, level)
    steps = [2, 4, 6, 8, 10, 12]
    checkpoints = [{"step": s, "judge_mean": 0.1 + (level - 0.1) * s / 12 + rng.gauss(0, 0.02),
                    "proxy_mean": 0.3 + level * s / 10, "kl_mean": 0.05 * s, "eos_share": 0.95, "length_mean": 30.0}
                   for s in steps]
    return ev | {"seed": rm_seed, "rm_seed": rm_seed, "proxy_mean": level + 0.3,
                 "proxy_per_prompt": [level + 0.3] * PROMPTS, "kl_mean": 0.6, "kl_per_prompt": [0.6] * PROMPTS,
                 "checkpoints": checkpoints, "history": _history(rng, level + 0.1), "train_seconds": 30.0 + rm_seed,
                 "peak_memory_bytes": 900 * MIB, "reward_threads": 1, "reward_scored_tokens": 4000,
                 "reward_int8_matmul": None,
                 "reward_kernel": {"kernel": "dense", "dtype": "float32", "why": "fits"}}


TARGET = {"bf16": 0.60, "int8": 0.55, "int4": 0.40, "null": 0.58, "noisy": 0.30}


def make_ppo_results(failed: dict[str, str] | None = None) -> dict:
    """ppo_experiment_results.json, assembled by the stage's own function from fake runs (5 arms x 3 reward-model
    seeds, one PPO run each)."""
    from tinyrlhf.evaluate import experiment_result

    failed = failed or {}
    runs = {arm: [_run(arm, seed, TARGET[arm]) if arm not in failed else
                  {"seed": seed, "rm_seed": seed, "status": "failed", "reason": failed[arm]} for seed in SEEDS]
            for arm in ARMS}
    sft = _evaluation(random.Random("sft"), 0.10)
    result = experiment_result(
        {"kind": "gold", "name": "gold reward", "why": "no arm trained on it", "path": None}, sft, runs,
        precisions={"bf16": "bf16", "int8": "int8", "int4": "int4", "null": "bf16", "noisy": "bf16"},
        rm_seeds=list(SEEDS), null="null", noisy="noisy", bootstrap=200, seed=0,
        eval_info={"prompts": PROMPTS, "samples": 4, "checkpoint_samples": 2, "checkpoint_steps": [2, 4, 6, 8, 10, 12],
                   "missing_eos_penalty": 1.0, "bootstrap": 200})
    return to_json_ready({"config_hash": "def456"} | result | {"manifest": make_manifest("ppo")})


BON_ARMS = (*ARMS, "served-int8", "served-int4")


def make_bon_results(failed: dict[str, str] | None = None) -> dict:
    """bon_results.json from the stage's own analysis (bon.analyse) of a fake pool: the gold reward is a hidden
    quality plus noise, each reward model sees the quality with its own error (the noisy arm's larger)."""
    import numpy as np

    from tinyrlhf import bon

    failed = failed or {}
    rng = np.random.default_rng(0)
    pool = 16
    quality = rng.normal(0, 1, (PROMPTS, pool))
    gold = quality + rng.normal(0, 0.3, (PROMPTS, pool))
    error = {"noisy": 1.5, "int4": 0.7, "served-w3": 0.8, "served-w2": 1.4}
    sweep = {f"served-w{k}": k for k in (8, 4, 3, 2)}
    proxies = {arm: np.stack([quality + rng.normal(0, error.get(arm, 0.5), (PROMPTS, pool)) if
                              f"{arm}/seed{s}" not in failed else np.full((PROMPTS, pool), np.nan) for s in SEEDS])
               for arm in (*BON_ARMS, *sweep)}
    analysis = bon.analyse(gold, proxies, reference="bf16", null="null", headline_n=4,
                           family=["int8", "int4", "served-int8", "served-int4"], sweep=sweep,
                           served_pairs={"int8": "served-int8", "int4": "served-int4"})
    analysis["bits"] |= {"group": 64, "how": "k-bit integer weights, 64 inputs per scale (torchao)"}
    scorers = {f"{arm}/seed{s}": {"arm": arm, "seed": s, "status": "failed" if f"{arm}/seed{s}" in failed else "ok",
                                  "reason": failed.get(f"{arm}/seed{s}")} for arm in BON_ARMS for s in SEEDS}
    return to_json_ready({"config_hash": "b0n", "manifest": make_manifest("bon"),
                          "judge": {"kind": "gold", "name": "gold reward", "why": "no arm trained on it"},
                          "pool_size": pool, "candidates": pool * PROMPTS, "pool_eos_share": 0.95,
                          "pool_length_mean": 30.0, "scorers": scorers,
                          "samples": [{"prompt": "Human: hi?", "response": "Hello.", "gold": 1.0, "ended": True}],
                          **analysis})


def make_data_stats() -> dict:
    return {"config_hash": "0a1b", "manifest": make_manifest("data"), "source": "synthetic",
            "sha256": {"synthetic": "f" * 64}, "rows_read": 1000, "kept": 980, "train": 880, "test": 100,
            "skipped": {"empty": 0, "duplicate": 20}, "token_lengths": {"prompt": {"p50": 20, "max": 64}}}


def make_sft_results() -> dict:
    return {"config_hash": "9z", "manifest": make_manifest("sft"), "before": {"loss": 3.2, "perplexity": 24.5},
            "after": {"loss": 2.1, "perplexity": 8.2}}


VALID = {"data_stats": make_data_stats, "sft": make_sft_results, "rm": make_rm_results, "bon": make_bon_results,
         "ppo": make_ppo_results}


def _error(obj, kind) -> str:
    with pytest.raises(SchemaError) as info:
        validate(obj, kind)
    return str(info.value)


@pytest.mark.parametrize("kind", SCHEMAS)
def test_schemas_are_valid_draft_2020_12(kind):
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[kind])


@pytest.mark.parametrize("kind", VALID)
def test_realistic_results_are_accepted(kind):
    obj = VALID[kind]()
    assert validate(obj, kind) is obj
    # What reaches the disk is strict JSON; it must still validate after a round trip.
    validate(json.loads(json.dumps(obj, allow_nan=False)), kind)


def test_failed_and_partial_runs_are_accepted():
    rm = make_rm_results(failed={"int4/seed1": "CUDA out of memory"})
    validate(rm, "rm")
    assert rm["arms"]["int4"]["status"] == "partial" and "CUDA out of memory (seed 1)" == rm["arms"]["int4"]["reason"]
    bon = make_bon_results(failed={"int8/seed2": "killed"})
    validate(bon, "bon")
    assert bon["arms"]["int8"]["status"] == "partial" and bon["arms"]["int8"]["seeds_ok"] == [0, 1]
    ppo = make_ppo_results(failed={"bf16": "diverged", "int4": "bitsandbytes has no CPU int4 kernel"})
    validate(ppo, "ppo")
    assert ppo["arms"]["int8"]["tax_vs_bf16"] is None  # no tax without a bf16 baseline
    partial = make_ppo_results()
    entry = partial["arms"]["int8"]
    entry["status"] = "partial"
    entry["judge_std_over_seeds"] = None  # one finished seed: no spread
    entry["seeds"][1] = {"seed": 1, "rm_seed": 1, "status": "failed", "reason": "killed", "history": []}
    validate(partial, "ppo")


@pytest.mark.parametrize("kind, mutate, path, words", [
    ("rm", lambda r: r["models"]["int8/seed0"].pop("accuracy"), "$.models['int8/seed0']",
     "'accuracy' is a required"),
    ("rm", lambda r: r["models"]["int8/seed1"].update(accuracy=1.3), "$.models['int8/seed1'].accuracy", "maximum"),
    ("rm", lambda r: r["models"]["int4/seed0"].update(footprint_bytes="17 MiB"),
     "$.models['int4/seed0'].footprint_bytes", "not of type 'integer'"),
    ("rm", lambda r: r["models"]["bf16/seed2"].update(accuracy=None), "$.models['bf16/seed2'].accuracy", "None"),
    ("rm", lambda r: r["arms"].update(fp8=r["arms"]["bf16"]), "$.arms", "fp8"),
    ("rm", lambda r: r["models"].update({"fp8/seed0": r["models"]["bf16/seed0"]}), "$.models", "fp8/seed0"),
    ("rm", lambda r: r["models"]["int8/seed0"].update(accuracy_ci95=[0.9, 0.7]),
     "$.models.int8/seed0.accuracy_ci95", "low > high"),
    ("rm", lambda r: r["models"]["int8/seed0"]["by_category"]["rude"].update(n=0),
     "$.models['int8/seed0'].by_category.rude.n", "minimum"),
    ("rm", lambda r: r["arms"]["int4"].update(above_chance_share=1.5), "$.arms.int4.above_chance_share", "maximum"),
    ("bon", lambda r: r["arms"]["int4"]["by_n"][1].update(tax_vs_bf16_ci95=[0.3, -0.3]),
     "$.arms.int4.by_n[1].tax_vs_bf16_ci95", "low > high"),
    ("bon", lambda r: r["arms"]["int4"].update(status="done"), "$.arms.int4.status", "done"),
    ("bon", lambda r: r.pop("n_star"), "$", "'n_star' is a required"),
    ("rm", lambda r: r["manifest"].pop("git_commit"), "$.manifest", "'git_commit' is a required"),
    ("rm", lambda r: r.pop("config_hash"), "$", "'config_hash' is a required"),
    ("ppo", lambda r: r["arms"]["int4"]["seeds"][1]["history"][4].update(kl="high"),
     "$.arms.int4.seeds[1].history[4].kl", "not of type"),
    ("ppo", lambda r: r["arms"]["int8"].update(status="done"), "$.arms.int8.status", "done"),
    ("ppo", lambda r: r["arms"]["int8"].update(win_rate_vs_sft=1.5), "$.arms.int8.win_rate_vs_sft", "maximum"),
    ("ppo", lambda r: r["arms"]["int8"].update(tax_vs_bf16_ci95=[0.3, -0.3]), "$.arms.int8.tax_vs_bf16_ci95",
     "low > high"),
    ("ppo", lambda r: r["sft"].pop("judge_mean"), "$.sft", "'judge_mean' is a required"),
    ("ppo", lambda r: r["judge"].update(kind="vibes"), "$.judge.kind", "vibes"),
    ("ppo", lambda r: r["cross_matrix"]["mean_reward"].pop(), "$.cross_matrix.mean_reward", "rows"),
    ("data_stats", lambda r: r["skipped"].update(duplicate=-1), "$.skipped.duplicate", "minimum"),
    ("sft", lambda r: r["after"].pop("perplexity"), "$.after", "'perplexity' is a required"),
])
def test_broken_results_are_rejected_naming_the_path(kind, mutate, path, words):
    obj = copy.deepcopy(VALID[kind]())
    mutate(obj)
    message = _error(obj, kind)
    assert f": {path}: " in message, message
    assert words in message, message


def test_message_names_the_file(tmp_path):
    rm = make_rm_results()
    rm["arms"]["int8"]["accuracy_mean"] = 2.0
    path = tmp_path / "rm_results.json"
    path.write_text(json.dumps(rm))
    with pytest.raises(SchemaError, match=rf"^{tmp_path}/rm_results\.json: \$\.arms\.int8\.accuracy_mean: "):
        validate_file(path, "rm")
    assert isinstance(SchemaError("x"), ValueError)


def test_validate_file_returns_content_and_unknown_kind_lists_kinds(tmp_path):
    path = tmp_path / "sft_results.json"
    path.write_text(json.dumps(make_sft_results()))
    assert validate_file(path, "sft")["after"]["loss"] == 2.1
    with pytest.raises(ValueError, match="data_stats, sft, rm, bon, ppo"):
        validate({}, "dpo")
