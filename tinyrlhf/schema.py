"""JSON Schemas of the result files, and their validation.

The schemas are the contract between the stages that write results and everything that reads them (tables,
figures, a paper's redraw). Validation uses the `jsonschema` library (draft 2020-12) rather than hand-written
checks, so the schemas stay plain data that other tools can read too.

What writers must follow:
- every file carries ``config_hash`` (str) and ``manifest`` (MANIFEST_SCHEMA); extra keys are allowed anywhere;
- numbers are JSON numbers; NaN/inf are written as null (results.atomic_write_json does that);
- a precision (or seed) that failed keeps its entry with ``status: "failed"`` and a ``reason``; its metrics
  may be absent or null. One that succeeded has every metric, non-null, except those documented as nullable.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
from jsonschema.exceptions import best_match

from .config import INT8_CPU_MATMULS, LABEL_NOISE_ON, NOISY_ARM, NULL_ARM, PRECISIONS, SERVED_PREFIX
from .results import read_json

DRAFT = "https://json-schema.org/draft/2020-12/schema"


class SchemaError(ValueError):
    """A result that does not match its schema; the message names the file (if known) and the JSON path."""


# Small builders, so that the schemas below read as lists of fields.
def _obj(required=(), **properties) -> dict:
    return {"type": "object", "required": list(required), "properties": properties}


def _nullable(schema: dict) -> dict:
    if "type" not in schema:  # an enum or a combination: null as one more alternative
        return {"anyOf": [schema, {"type": "null"}]}
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return {**schema, "type": types if "null" in types else [*types, "null"]}


def _interval(bound: dict) -> dict:
    """[low, high]; that low <= high is checked in Python (JSON Schema cannot compare two items)."""
    return {"type": "array", "prefixItems": [bound, bound], "minItems": 2, "maxItems": 2}


STR = {"type": "string"}
NUM = {"type": "number"}
INT = {"type": "integer"}
NONNEG = {"type": "number", "minimum": 0}
NONNEG_INT = {"type": "integer", "minimum": 0}
UNIT = {"type": "number", "minimum": 0, "maximum": 1}
OBJECT = {"type": "object"}
BOOL = {"type": "boolean"}
REASON = _nullable(STR)


def _run_entry(status: list[str], done: list[str], metrics: dict, *, keep_nullable=(), required=(),
               **more) -> dict:
    """A run's entry: status, reason and `metrics`. Metrics may be null or absent in general (a failed run);
    when the status is in `done` they are all required and non-null, except `keep_nullable`."""
    strict = {k: _nullable(v) if k in keep_nullable else v for k, v in metrics.items()}
    entry = _obj(["status", "reason", *required], status={"enum": status}, reason=REASON,
                 **{k: _nullable(v) for k, v in metrics.items()}, **more)
    entry["if"] = {"properties": {"status": {"enum": done}}, "required": ["status"]}
    entry["then"] = _obj(list(metrics), **strict)
    return entry


MANIFEST_SCHEMA = {
    "$schema": DRAFT,
    "title": "manifest: how a result was produced",
    **_obj(["stage", "profile", "config", "seeds", "packages", "git_commit", "hardware", "timings", "peak_memory",
            "data_source"],
           stage=STR, profile=STR, config=OBJECT, seeds={"type": "array", "items": INT}, packages=OBJECT,
           git_commit=_nullable(STR), hardware=OBJECT, timings=OBJECT, peak_memory=OBJECT, data_source=OBJECT),
}


# What a result was made from (upstream fingerprints) and what it wrote (paths relative to the workdir).
LINEAGE = _obj(["inputs", "outputs", "fingerprint"], inputs={"type": "object", "additionalProperties": _nullable(STR)},
               outputs={"type": "object", "additionalProperties": _obj(["bytes", "sha256"], bytes=NONNEG_INT,
                                                                       sha256=STR)},
               fingerprint=STR)


def _result_schema(title: str, required: list[str], **properties) -> dict:
    """Top level of a result file; the manifest schema is embedded under $defs so each schema stands alone."""
    manifest = {k: v for k, v in MANIFEST_SCHEMA.items() if k != "$schema"}
    return {"$schema": DRAFT, "title": title, "$defs": {"manifest": manifest},
            **_obj(["config_hash", "manifest", *required], config_hash=STR, manifest={"$ref": "#/$defs/manifest"},
                   lineage=LINEAGE, **properties)}


DATA_STATS_SCHEMA = _result_schema(
    "data_stats.json: data preparation",
    ["source", "sha256", "rows_read", "kept", "train", "test", "skipped", "token_lengths"],
    source=STR, sha256={"type": "object", "additionalProperties": STR},
    rows_read=NONNEG_INT, kept=NONNEG_INT, train=NONNEG_INT, test=NONNEG_INT,
    skipped={"type": "object", "additionalProperties": NONNEG_INT}, token_lengths=OBJECT,
)

_LOSS_PPL = _obj(["loss", "perplexity"], loss=_nullable(NUM), perplexity=_nullable(NUM))
SFT_RESULTS_SCHEMA = _result_schema("sft_results.json: supervised fine-tuning", ["before", "after"],
                                    before=_LOSS_PPL, after=_LOSS_PPL)

ARM_NAMES = [*PRECISIONS, NULL_ARM, NOISY_ARM, "judge", "same-recipe-judge"]  # the judges' own reward models
BON_ARM_NAMES = [*ARM_NAMES, *(SERVED_PREFIX + p for p in PRECISIONS if p != "bf16")]
CATEGORY_ACCURACY = {"type": "object", "additionalProperties": _obj(
    ["n", "accuracy", "accuracy_ci95"], n={"type": "integer", "minimum": 1}, accuracy=UNIT,
    accuracy_ci95=_interval(UNIT))}
MCNEMAR = _nullable(_obj(["only_first_right", "only_second_right", "p_value"], only_first_right=NONNEG_INT,
                         only_second_right=NONNEG_INT, p_value=UNIT))
RM_METRICS = {
    "precision": {"enum": list(PRECISIONS)}, "train_seed": INT, "label_noise": UNIT, "flipped_pairs": NONNEG_INT,
    "accuracy": UNIT, "accuracy_ci95": _interval(UNIT), "by_category": CATEGORY_ACCURACY, "mean_margin": NUM,
    "agreement_with_bf16": UNIT, "rank_correlation_with_bf16": {"type": "number", "minimum": -1, "maximum": 1},
    "mcnemar_vs_bf16": MCNEMAR,
    "footprint_bytes": NONNEG_INT, "train_seconds": NONNEG, "peak_memory_bytes": NONNEG_INT,
    "throughput_pairs_per_s": NONNEG, "compute_dtype": STR, "loss_curve": {"type": "array", "items": _nullable(NUM)},
    "n_test_pairs": {"type": "integer", "minimum": 1},
}

# The CPU kernel an arm's reward model scores with (kernels.choose), and, for int8 and int4, the test pairs scored
# again through every other CPU path (reward.compare_cpu_kernels)
CPU_KERNEL = _obj(["kernel", "dtype", "why"], kernel=STR, dtype=STR, why=STR)
CPU_KERNEL_CHECK = _obj(["used", "others", "mean_abs_margin"], used=STR, accuracy=UNIT, pairs_per_s=NONNEG,
                        mean_abs_margin=NONNEG,
                        failed={"type": "object", "additionalProperties": STR},
                        others={"type": "object", "additionalProperties": _obj(
                            ["same_order", "max_abs_score_difference"], same_order=UNIT,
                            max_abs_score_difference=NONNEG, accuracy=UNIT, pairs_per_s=NONNEG)})


def _by_arm(entry: dict, names=ARM_NAMES) -> dict:
    return {"type": "object", "propertyNames": {"enum": names}, "minProperties": 1,
            "additionalProperties": entry}


MODEL_ID = {"type": "string", "pattern": f"^(({'|'.join(ARM_NAMES)})/seed[0-9]+|judge|same-recipe-judge)$"}
SEED_SUMMARY = _run_entry(
    ["ok", "partial", "failed"], ["ok", "partial"],
    {"accuracy_mean": UNIT, "accuracy_sd": NONNEG, "accuracy_min": UNIT, "accuracy_max": UNIT,
     "above_chance_share": UNIT, "footprint_bytes": NONNEG_INT, "train_seconds_mean": NONNEG,
     "by_category": {"type": "object", "additionalProperties": _obj(["mean", "min", "max"], mean=UNIT, min=UNIT,
                                                                     max=UNIT)}},
    keep_nullable=("accuracy_sd",), required=["precision", "seeds"], precision={"enum": list(PRECISIONS)},
    seeds={"type": "array", "items": _nullable(INT), "minItems": 1}, label_noise=UNIT)
RM_RESULTS_SCHEMA = _result_schema(
    "rm_results.json: one reward model per arm and reward-model seed (precisions, the null and noisy arms) and the "
    "heldout judge's", ["models", "arms", "seeds"],
    # Comparisons with bf16 stay nullable: there is nothing to compare with when bf16 itself failed.
    models={"type": "object", "propertyNames": MODEL_ID, "minProperties": 1,
            "additionalProperties": _run_entry(
                ["ok", "failed"], ["ok"], RM_METRICS, required=["arm", "seed"], arm={"enum": ARM_NAMES},
                seed=_nullable(INT),
                keep_nullable=("agreement_with_bf16", "rank_correlation_with_bf16", "mcnemar_vs_bf16"),
                cpu_kernel=_nullable(CPU_KERNEL), cpu_kernel_check=_nullable(CPU_KERNEL_CHECK))},
    arms=_by_arm(SEED_SUMMARY), seeds={"type": "array", "items": INT, "minItems": 1},
    null_arm=_nullable(STR), noisy_arm=_nullable(STR), judge_arm=_nullable(STR), label_noise=UNIT,
    label_noise_on=_nullable({"enum": [v for v in LABEL_NOISE_ON if v != "auto"]}),
)

SAMPLES = {"type": "array", "items": _obj(["prompt", "response", "judged_reward"], prompt=STR, response=STR,
                                          judged_reward=_nullable(NUM), ended=BOOL)}
HISTORY_ROW = _obj(["step", "reward", "kl"], step=NONNEG_INT, reward=_nullable(NUM), kl=_nullable(NUM),
                   entropy=_nullable(NUM), policy_loss=_nullable(NUM), value_loss=_nullable(NUM),
                   clipfrac=_nullable(NUM), seconds=_nullable(NONNEG))
PER_PROMPT = {"type": "array", "items": NUM, "minItems": 1}
CHECKPOINT = _obj(["step", "judge_mean", "proxy_mean", "kl_mean", "eos_share"], step=NONNEG_INT, judge_mean=NUM,
                  proxy_mean=NUM, kl_mean=NUM, eos_share=UNIT, length_mean=NONNEG)
EVALUATION = {"judge_mean": NUM, "judge_per_prompt": PER_PROMPT, "eos_share": UNIT, "length_mean": NONNEG,
              "cross": {"type": "object", "additionalProperties": NUM}, "samples": SAMPLES}
SEED_METRICS = {**EVALUATION, "proxy_mean": NUM, "proxy_per_prompt": PER_PROMPT, "kl_mean": NUM,
                "kl_per_prompt": PER_PROMPT, "win_rate_vs_sft": UNIT, "train_seconds": NONNEG,
                "peak_memory_bytes": NONNEG_INT, "reward_threads": {"type": "integer", "minimum": 1},
                "reward_scored_tokens": NONNEG_INT, "reward_int8_matmul": _nullable({"enum": list(INT8_CPU_MATMULS)}),
                "reward_kernel": _nullable(CPU_KERNEL),
                "checkpoints": {"type": "array", "items": CHECKPOINT, "minItems": 1},
                "history": {"type": "array", "items": HISTORY_ROW}}
SEED_RUN = _run_entry(["ok", "failed"], ["ok"], SEED_METRICS, required=["seed", "rm_seed"], seed=INT, rm_seed=INT)
FRONTIER_POINT = _obj(["step", "d", "kl", "gold_gain", "proxy_gain"], seed=_nullable(INT), rm_seed=_nullable(INT),
                      step=NONNEG_INT, d=NONNEG, kl=NUM, gold_gain=NUM, proxy_gain=_nullable(NUM))
FRONTIER = _obj(["points", "fit"], points={"type": "array", "items": FRONTIER_POINT},
                fit=_obj(["alpha", "beta", "alpha_ci95", "beta_ci95"], alpha=_nullable(NUM), beta=_nullable(NUM),
                         alpha_ci95=_nullable(_interval(NUM)), beta_ci95=_nullable(_interval(NUM))))
COMPONENTS = _obj(["seed", "prompt", "residual", "seeds", "prompts"], seed=NONNEG, prompt=NONNEG,
                  residual=_nullable(NONNEG), seeds=NONNEG_INT, prompts=NONNEG_INT)
PROJECTION = _obj(["components", "half_width_by_seeds", "half_width_grid", "target", "reaches_target"],
                  components=_nullable(COMPONENTS),
                  half_width_by_seeds={"type": "object", "additionalProperties": NONNEG},
                  half_width_by_seeds_range={"type": "object", "additionalProperties": _nullable(_interval(NUM))},
                  half_width_grid={"type": "array", "items": _obj(["seeds", "prompt_factor", "half_width"],
                                                                  seeds=NONNEG_INT, prompt_factor=NONNEG_INT,
                                                                  half_width=NONNEG)},
                  target=NONNEG, reaches_target=_nullable(OBJECT))
ARM_METRICS = {
    "precision": {"enum": list(PRECISIONS)}, "judge_mean": NUM, "judge_std_over_seeds": NONNEG, "proxy_mean": NUM,
    "kl_mean": NUM, "eos_share": UNIT, "length_mean": NONNEG, "win_rate_vs_sft": UNIT,
    "gold_gain_vs_sft": NUM, "gold_gain_vs_sft_ci95": _interval(NUM), "tax_vs_bf16": NUM,
    "tax_vs_bf16_ci95": _interval(NUM), "gain_diff_vs_bf16": NUM, "gain_diff_vs_bf16_ci95": _interval(NUM),
    "train_seconds_mean": NONNEG, "peak_memory_bytes_max": NONNEG_INT, "frontier": FRONTIER,
}
# What stats.arm_statistics adds beside the gains and taxes (both stages)
COMPARISON = {"tax_undefined": _nullable(STR), "tax_ruled_out_above": _nullable(NUM),
              "tax_minus_null": _nullable(NUM), "tax_minus_null_ci95": _nullable(_interval(NUM)),
              "seeds_used": {"type": "array", "items": NONNEG_INT},
              "paired_seeds": {"type": "array", "items": NONNEG_INT},
              "per_seed_gain_diff": {"type": "array", "items": NUM},
              "per_seed_tax": {"type": "array", "items": _nullable(NUM)},
              "sign_flip_p": _nullable(UNIT)}
_NULLABLE_STATS = ("judge_std_over_seeds", "gold_gain_vs_sft_ci95", "tax_vs_bf16", "tax_vs_bf16_ci95",
                   "gain_diff_vs_bf16", "gain_diff_vs_bf16_ci95")
PPO_RESULTS_SCHEMA = _result_schema(
    "ppo_experiment_results.json: PPO against each arm's reward model, judged by a judge no arm trained against",
    ["judge", "eval", "sft", "arms", "cross_matrix"],
    judge=_obj(["kind", "name", "why"], kind={"enum": ["gold", "reward_model", "external"]}, name=STR, why=STR,
               path=_nullable(STR)),
    eval=_obj(["prompts", "samples", "checkpoint_steps", "missing_eos_penalty", "bootstrap"],
              prompts={"type": "integer", "minimum": 1}, samples={"type": "integer", "minimum": 1},
              checkpoint_steps={"type": "array", "items": NONNEG_INT, "minItems": 1}, missing_eos_penalty=NONNEG,
              bootstrap=NONNEG_INT),
    sft=_obj(list(EVALUATION), **EVALUATION),
    null_arm=_nullable(STR),
    # "partial": some seeds failed; the aggregates cover the finished ones. One finished seed has no spread,
    # and there is no tax when bf16 failed (and no interval from too few draws), hence those stay nullable.
    arms=_by_arm(_run_entry(
        ["ok", "partial", "failed"], ["ok", "partial"], ARM_METRICS, required=["seeds"],
        keep_nullable=_NULLABLE_STATS, seeds={"type": "array", "items": SEED_RUN},
        projection=_nullable(PROJECTION), **COMPARISON)),  # projection: every arm but bf16
    noisy_arm=_nullable(STR), rm_seeds={"type": "array", "items": INT},
    cross_matrix=_obj(["policies", "judges", "mean_reward"],
                      policies={"type": "array", "items": STR, "minItems": 1},
                      judges={"type": "array", "items": STR, "minItems": 1},
                      mean_reward={"type": "array", "items": {"type": "array", "items": _nullable(NUM)}}),
)

BON_STATS = {"gold_gain_vs_sft": _nullable(NUM), "gold_gain_vs_sft_ci95": _nullable(_interval(NUM)),
             "tax_vs_bf16": _nullable(NUM), "tax_vs_bf16_ci95": _nullable(_interval(NUM)),
             "tax_vs_bf16_band": _nullable(_interval(NUM)), "tax_vs_bf16_family_ci95": _nullable(_interval(NUM)),
             "family": {"type": "array", "items": STR}, "ratio_leads": {"type": "boolean"},
             "reference_gain_z": _nullable(NUM),
             "gain_diff_vs_bf16": _nullable(NUM), "gain_diff_vs_bf16_ci95": _nullable(_interval(NUM)), **COMPARISON}
BON_RESULTS_SCHEMA = _result_schema(
    "bon_results.json: best-of-n of every arm on one gold-judged candidate pool from the SFT policy",
    ["judge", "prompts", "pool_size", "ns", "kl", "n_star", "pool_gold_mean", "arms", "scorers"],
    judge=_obj(["kind", "name", "why"], kind={"enum": ["gold", "reward_model", "external"]}, name=STR, why=STR),
    prompts={"type": "integer", "minimum": 1}, pool_size={"type": "integer", "minimum": 1},
    ns={"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
    kl={"type": "array", "items": NONNEG, "minItems": 1}, n_star=_nullable(INT), pool_gold_mean=NUM,
    n_peak=_nullable(INT), n_star_rule=STR,
    bits=_nullable(_obj(["rows", "onset_bits", "trend"],
                        rows={"type": "array", "items": _obj(["arm", "bits"], arm=STR, bits=INT, **BON_STATS)},
                        onset_bits=_nullable(INT), stopped_at=_nullable(INT), trend=_nullable(_obj(
                            ["per_halving", "per_halving_ci95"], per_halving=_nullable(NUM),
                            per_halving_ci95=_nullable(_interval(NUM)),
                            per_seed={"type": "array", "items": _nullable(NUM)}, sign_flip_p=_nullable(UNIT))))),
    trained_minus_served=_nullable({"type": "object", "additionalProperties": _obj(
        ["value", "ci95"], value=_nullable(NUM), ci95=_nullable(_interval(NUM)), sign_flip_p=_nullable(UNIT),
        per_seed={"type": "array", "items": _nullable(NUM)})}),
    pool_eos_share=UNIT, pool_length_mean=NONNEG,
    second_judge=_obj(["status", "name"], status={"enum": ["ok", "failed"]}, name=STR, n=INT,
                      rank_correlation=_nullable(NUM), arms={"type": "object", "additionalProperties": _obj(
                          ["tax_judge", "tax_second", "difference", "difference_ci95"], tax_judge=_nullable(NUM),
                          tax_second=_nullable(NUM), difference=_nullable(NUM),
                          difference_ci95=_nullable(_interval(NUM)), sign_flip_p=_nullable(UNIT))}),
    scorers={"type": "object", "additionalProperties": _obj(["arm", "seed", "status"], arm=STR, seed=_nullable(INT),
                                                             status={"enum": ["ok", "failed"]}, reason=REASON)},
    arms=_by_arm(_run_entry(
        ["ok", "partial", "failed"], ["ok", "partial"],
        {"by_n": {"type": "array", "items": _obj(["n", "gold_gain_vs_sft"], n=INT, proxy_gain=_nullable(NUM),
                                                 **BON_STATS), "minItems": 1},
         "frontier": _obj(["alpha", "beta"], alpha=_nullable(NUM), beta=_nullable(NUM))},
        at_n_star=_nullable(_obj(["n"], n=INT, **BON_STATS)), seeds_ok={"type": "array", "items": NONNEG_INT},
        projection=_nullable(PROJECTION)), BON_ARM_NAMES),
)

SCHEMAS = {"data_stats": DATA_STATS_SCHEMA, "sft": SFT_RESULTS_SCHEMA, "rm": RM_RESULTS_SCHEMA,
           "bon": BON_RESULTS_SCHEMA, "ppo": PPO_RESULTS_SCHEMA}
FILE_NAMES = {"data_stats": "data_stats.json", "sft": "sft_results.json", "rm": "rm_results.json",
              "bon": "bon_results.json", "ppo": "ppo_experiment_results.json"}


def _schema_problems(obj, kind: str):
    """(json_path, message) of the most relevant schema violation, or None."""
    validator = jsonschema.Draft202012Validator(SCHEMAS[kind])
    error = best_match(validator.iter_errors(obj))
    return None if error is None else (error.json_path, error.message)


def _intervals(obj, kind: str):
    """Every [low, high] interval of a valid result, with its JSON path."""
    stats = ["gold_gain_vs_sft_ci95", "tax_vs_bf16_ci95", "gain_diff_vs_bf16_ci95", "tax_minus_null_ci95",
             "tax_vs_bf16_band", "tax_vs_bf16_family_ci95"]
    if kind == "rm":
        for mid, entry in obj.get("models", {}).items():
            if entry.get("accuracy_ci95") is not None:
                yield f"$.models.{mid}.accuracy_ci95", entry["accuracy_ci95"]
    for arm, entry in (obj.get("arms", {}) if kind in ("ppo", "bon") else {}).items():
        rows = [("", entry)] + [(f".by_n[{i}]", row) for i, row in enumerate(entry.get("by_n") or [])]
        for where, row in rows:
            for name in stats:
                if row.get(name) is not None:
                    yield f"$.arms.{arm}{where}.{name}", row[name]


def _semantic_problem(obj, kind: str):
    """What JSON Schema cannot express: interval order, and the cross matrix's shape matching its labels."""
    for path, (low, high) in _intervals(obj, kind):
        if low > high:
            return path, f"[{low}, {high}] has low > high"
    if kind == "ppo":
        m = obj["cross_matrix"]
        if len(m["mean_reward"]) != len(m["policies"]):
            return "$.cross_matrix.mean_reward", f"{len(m['mean_reward'])} rows for {len(m['policies'])} policies"
        for i, row in enumerate(m["mean_reward"]):
            if len(row) != len(m["judges"]):
                return f"$.cross_matrix.mean_reward[{i}]", f"{len(row)} values for {len(m['judges'])} judges"
    return None


def validate(obj, kind: str, *, source: str | Path | None = None):
    """Check a result against its schema; return it unchanged, or raise SchemaError naming the first problem.

    kind: "data_stats", "sft", "rm", "bon" or "ppo". source: the file it came from, for the message.
    """
    if kind not in SCHEMAS:
        raise ValueError(f"unknown result kind {kind!r}; allowed: {', '.join(SCHEMAS)}")
    problem = _schema_problems(obj, kind) or _semantic_problem(obj, kind)
    if problem:
        path, message = problem
        where = f"{source}: " if source else f"{FILE_NAMES[kind]} (in memory): "
        raise SchemaError(f"{where}{path}: {message}")
    return obj


def validate_file(path: str | Path, kind: str):
    """Read a JSON result file, validate it, and return its content."""
    return validate(read_json(path), kind, source=path)
