"""Result-file schemas: realistic results pass, broken ones fail with the JSON path of the problem.

The builders here (make_rm_results, make_ppo_results, ...) are also the fixtures of test_plots.py: small,
generated in memory, shaped like what the stages write (3 precisions x 2 seeds, with training history).
"""

from __future__ import annotations

import copy
import json
import random
import statistics

import jsonschema
import pytest

from tinyrlhf.schema import SCHEMAS, SchemaError, validate, validate_file

PRECISIONS = ("bf16", "int8", "int4")
SEEDS = (0, 1)
MIB = 2**20


def make_manifest(stage: str) -> dict:
    return {"stage": stage, "created_unix": 1.7e9, "profile": "cpu", "config": {"name": "cpu", "seed": 0},
            "seeds": list(SEEDS), "packages": {"python": "3.11.9", "torch": "2.13.0", "trl": "1.12.0"},
            "git_commit": None, "hardware": {"cuda": False, "cpu_count": 2}, "timings": {"total": 12.5},
            "peak_memory": {"peak_bytes": 900 * MIB}, "data_source": {"source": "synthetic"}}


def _fail(entry: dict, reason: str, keep=("status", "reason")) -> dict:
    """A failed run as the writers store it: metrics null."""
    return {k: (v if k in keep else None) for k, v in entry.items()} | {"status": "failed", "reason": reason}


def make_rm_results(failed: dict[str, str] | None = None) -> dict:
    """rm_results.json; `failed` maps precision -> reason for precisions that failed."""
    failed = failed or {}
    accuracy = {"bf16": 0.83, "int8": 0.81, "int4": 0.74}
    footprint = {"bf16": 48 * MIB, "int8": 27 * MIB, "int4": 17 * MIB}
    precisions = {}
    for i, p in enumerate(PRECISIONS):
        a = accuracy[p]
        entry = {"status": "ok", "reason": None, "accuracy": a, "accuracy_ci95": [a - 0.05, a + 0.05],
                 "mean_margin": 1.2 - 0.3 * i, "agreement_with_bf16": 1.0 - 0.06 * i,
                 "rank_correlation_with_bf16": 1.0 - 0.1 * i, "footprint_bytes": footprint[p],
                 "train_seconds": 60.0 + 25 * i, "peak_memory_bytes": (700 - 100 * i) * MIB,
                 "throughput_pairs_per_s": 40.0 - 8 * i, "compute_dtype": "bfloat16",
                 "loss_curve": [0.69 * 0.95**k + 0.02 * i for k in range(30)], "n_test_pairs": 300}
        precisions[p] = _fail(entry, failed[p]) if p in failed else entry
    return {"config_hash": "abc123", "manifest": make_manifest("rm"), "precisions": precisions}


def _history(rng: random.Random, level: float, steps: int = 12) -> list[dict]:
    rows, seconds = [], 0.0
    for step in range(steps):
        seconds += 2.0 + rng.random()
        progress = step / (steps - 1)
        rows.append({"step": step, "reward": level * progress + rng.gauss(0, 0.05), "kl": 0.4 * progress**1.5,
                     "entropy": 2.5 - 0.5 * progress, "policy_loss": -0.02 + rng.gauss(0, 0.01),
                     "value_loss": 0.3 * (1 - progress) + 0.05, "clipfrac": 0.1 * rng.random(),
                     "seconds": seconds})
    return rows


def _samples(rng: random.Random, n: int = 3) -> list[dict]:
    return [{"prompt": f"Human: question {k}?", "response": f"Assistant: answer {k}.",
             "judged_reward": rng.gauss(0.5, 0.2)} for k in range(n)]


def _ci95(values: list[float]) -> list[float]:
    half = 1.96 * statistics.stdev(values) / len(values) ** 0.5
    return [statistics.fmean(values) - half, statistics.fmean(values) + half]


def make_ppo_results(failed: dict[str, str] | None = None) -> dict:
    """ppo_experiment_results.json with the documented semantics (gain, tax, ci95 across seeds)."""
    failed = failed or {}
    sft_mean = 0.10
    target = {"bf16": 0.60, "int8": 0.55, "int4": 0.40}
    precisions = {}
    for i, p in enumerate(PRECISIONS):
        seeds = []
        for seed in SEEDS:
            rng = random.Random(f"{p}-{seed}")
            seeds.append({"seed": seed, "status": "ok", "reason": None,
                          "judged_reward_mean": target[p] + rng.gauss(0, 0.03),
                          "own_reward_mean": target[p] + 0.1 + rng.gauss(0, 0.03), "kl_mean": 0.2 + 0.05 * i,
                          "win_rate_vs_sft": 0.7 - 0.05 * i, "response_length_mean": 40.0 + i,
                          "train_seconds": 100.0 + 20 * i + seed, "peak_memory_bytes": (1200 - 150 * i) * MIB,
                          "history": _history(rng, target[p] + 0.1), "samples": _samples(rng)})
        judged = [s["judged_reward_mean"] for s in seeds]
        precisions[p] = {
            "status": "ok", "reason": None, "judged_reward_mean": statistics.fmean(judged),
            "judged_reward_std": statistics.stdev(judged), "judged_reward_ci95": _ci95(judged),
            "own_reward_mean": statistics.fmean(s["own_reward_mean"] for s in seeds),
            "gain_vs_sft": statistics.fmean(judged) - sft_mean, "tax_vs_bf16": None, "tax_vs_bf16_ci95": None,
            "kl_mean": statistics.fmean(s["kl_mean"] for s in seeds),
            "win_rate_vs_sft": statistics.fmean(s["win_rate_vs_sft"] for s in seeds),
            "response_length_mean": 40.0 + i, "train_seconds_mean": statistics.fmean(s["train_seconds"] for s in seeds),
            "peak_memory_bytes_max": max(s["peak_memory_bytes"] for s in seeds), "seeds": seeds}
    for p, entry in precisions.items():
        if p in failed:
            entry.update(_fail(entry, failed[p], keep=("status", "reason", "seeds")))
            entry["seeds"] = [_fail(s, failed[p], keep=("seed",)) | {"history": s["history"][:3]}
                              for s in entry["seeds"]]
    bf16 = precisions["bf16"]
    for entry in precisions.values():
        if entry["status"] == "ok" and bf16["status"] == "ok":
            bf16_gain = bf16["gain_vs_sft"]
            entry["tax_vs_bf16"] = (bf16_gain - entry["gain_vs_sft"]) / abs(bf16_gain)
            entry["tax_vs_bf16_ci95"] = [entry["tax_vs_bf16"] - 0.1, entry["tax_vs_bf16"] + 0.1]
    policies = ["sft", *PRECISIONS]
    matrix = [[None if p in failed or j in failed else 0.1 + 0.2 * a - 0.05 * b for b, j in enumerate(PRECISIONS)]
              for a, p in enumerate(policies)]
    return {"config_hash": "def456", "manifest": make_manifest("ppo"), "judge": "bf16",
            "sft": {"judged_reward_mean": sft_mean, "judged_reward_std": 0.3, "response_length_mean": 38.0,
                    "samples": _samples(random.Random("sft"))},
            "precisions": precisions,
            "cross_matrix": {"policies": policies, "judges": list(PRECISIONS), "mean_reward": matrix}}


def make_data_stats() -> dict:
    return {"config_hash": "0a1b", "manifest": make_manifest("data"), "source": "synthetic",
            "sha256": {"synthetic": "f" * 64}, "rows_read": 1000, "kept": 980, "train": 880, "test": 100,
            "skipped": {"empty": 0, "duplicate": 20}, "token_lengths": {"prompt": {"p50": 20, "max": 64}}}


def make_sft_results() -> dict:
    return {"config_hash": "9z", "manifest": make_manifest("sft"), "before": {"loss": 3.2, "perplexity": 24.5},
            "after": {"loss": 2.1, "perplexity": 8.2}}


VALID = {"data_stats": make_data_stats, "sft": make_sft_results, "rm": make_rm_results, "ppo": make_ppo_results}


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
    validate(make_rm_results(failed={"int4": "CUDA out of memory"}), "rm")
    ppo = make_ppo_results(failed={"bf16": "diverged", "int4": "bitsandbytes has no CPU int4 kernel"})
    validate(ppo, "ppo")
    assert ppo["precisions"]["int8"]["tax_vs_bf16"] is None  # no tax without a bf16 baseline
    partial = make_ppo_results()
    entry = partial["precisions"]["int8"]
    entry["status"] = "partial"
    entry["judged_reward_std"] = entry["judged_reward_ci95"] = None  # one finished seed: no spread
    entry["seeds"][1] = {"seed": 1, "status": "failed", "reason": "killed", "history": []}
    validate(partial, "ppo")


@pytest.mark.parametrize("kind, mutate, path, words", [
    ("rm", lambda r: r["precisions"]["int8"].pop("accuracy"), "$.precisions.int8", "'accuracy' is a required"),
    ("rm", lambda r: r["precisions"]["int8"].update(accuracy=1.3), "$.precisions.int8.accuracy", "maximum"),
    ("rm", lambda r: r["precisions"]["int4"].update(footprint_bytes="17 MiB"), "$.precisions.int4.footprint_bytes",
     "not of type 'integer'"),
    ("rm", lambda r: r["precisions"]["bf16"].update(accuracy=None), "$.precisions.bf16.accuracy", "None"),
    ("rm", lambda r: r["precisions"].update(fp8=r["precisions"]["bf16"]), "$.precisions", "fp8"),
    ("rm", lambda r: r["precisions"]["int8"].update(accuracy_ci95=[0.9, 0.7]), "$.precisions.int8.accuracy_ci95",
     "low > high"),
    ("rm", lambda r: r["manifest"].pop("git_commit"), "$.manifest", "'git_commit' is a required"),
    ("rm", lambda r: r.pop("config_hash"), "$", "'config_hash' is a required"),
    ("ppo", lambda r: r["precisions"]["int4"]["seeds"][1]["history"][4].update(kl="high"),
     "$.precisions.int4.seeds[1].history[4].kl", "not of type"),
    ("ppo", lambda r: r["precisions"]["int8"].update(status="done"), "$.precisions.int8.status", "done"),
    ("ppo", lambda r: r["precisions"]["int8"].update(win_rate_vs_sft=1.5), "$.precisions.int8.win_rate_vs_sft",
     "maximum"),
    ("ppo", lambda r: r["sft"].pop("judged_reward_mean"), "$.sft", "'judged_reward_mean' is a required"),
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
    rm["precisions"]["int8"]["accuracy"] = 2.0
    path = tmp_path / "rm_results.json"
    path.write_text(json.dumps(rm))
    with pytest.raises(SchemaError, match=rf"^{tmp_path}/rm_results\.json: \$\.precisions\.int8\.accuracy: "):
        validate_file(path, "rm")
    assert isinstance(SchemaError("x"), ValueError)


def test_validate_file_returns_content_and_unknown_kind_lists_kinds(tmp_path):
    path = tmp_path / "sft_results.json"
    path.write_text(json.dumps(make_sft_results()))
    assert validate_file(path, "sft")["after"]["loss"] == 2.1
    with pytest.raises(ValueError, match="data_stats, sft, rm, ppo"):
        validate({}, "dpo")
