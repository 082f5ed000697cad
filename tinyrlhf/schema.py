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

from .config import INT8_CPU_MATMULS, NULL_ARM, PRECISIONS
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

ARM_NAMES = [*PRECISIONS, NULL_ARM, "judge"]
CATEGORY_ACCURACY = {"type": "object", "additionalProperties": _obj(
    ["n", "accuracy", "accuracy_ci95"], n={"type": "integer", "minimum": 1}, accuracy=UNIT,
    accuracy_ci95=_interval(UNIT))}
MCNEMAR = _nullable(_obj(["only_first_right", "only_second_right", "p_value"], only_first_right=NONNEG_INT,
                         only_second_right=NONNEG_INT, p_value=UNIT))
RM_METRICS = {
    "precision": {"enum": list(PRECISIONS)}, "seed": INT,
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


def _by_arm(entry: dict) -> dict:
    return {"type": "object", "propertyNames": {"enum": ARM_NAMES}, "minProperties": 1,
            "additionalProperties": entry}


RM_RESULTS_SCHEMA = _result_schema(
    "rm_results.json: one reward model per arm (precisions, the null arm, the heldout judge)", ["arms"],
    # Comparisons with bf16 stay nullable: there is nothing to compare with when bf16 itself failed.
    arms=_by_arm(_run_entry(["ok", "failed"], ["ok"], RM_METRICS,
                            keep_nullable=("agreement_with_bf16", "rank_correlation_with_bf16", "mcnemar_vs_bf16"),
                            cpu_kernel=_nullable(CPU_KERNEL), cpu_kernel_check=_nullable(CPU_KERNEL_CHECK))),
    null_arm=_nullable(STR), judge_arm=_nullable(STR),
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
SEED_RUN = _run_entry(["ok", "failed"], ["ok"], SEED_METRICS, required=["seed"], seed=INT)
FRONTIER_POINT = _obj(["step", "d", "kl", "gold_gain", "proxy_gain"], seed=_nullable(INT), step=NONNEG_INT,
                      d=NONNEG, kl=NUM, gold_gain=NUM, proxy_gain=NUM)
FRONTIER = _obj(["points", "fit"], points={"type": "array", "items": FRONTIER_POINT},
                fit=_obj(["alpha", "beta", "alpha_ci95", "beta_ci95"], alpha=_nullable(NUM), beta=_nullable(NUM),
                         alpha_ci95=_nullable(_interval(NUM)), beta_ci95=_nullable(_interval(NUM))))
PROJECTION = _obj(["variance_seeds", "variance_prompts", "half_width_by_seeds", "half_width_grid", "target",
                   "reaches_target"], variance_seeds=_nullable(NONNEG), variance_prompts=_nullable(NONNEG),
                  half_width_by_seeds={"type": "object", "additionalProperties": NONNEG},
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
        keep_nullable=("judge_std_over_seeds", "gold_gain_vs_sft_ci95", "tax_vs_bf16", "tax_vs_bf16_ci95",
                       "gain_diff_vs_bf16", "gain_diff_vs_bf16_ci95"),
        seeds={"type": "array", "items": SEED_RUN},
        projection=_nullable(PROJECTION))),  # every arm but bf16 (the reference has no tax)
    cross_matrix=_obj(["policies", "judges", "mean_reward"],
                      policies={"type": "array", "items": STR, "minItems": 1},
                      judges={"type": "array", "items": STR, "minItems": 1},
                      mean_reward={"type": "array", "items": {"type": "array", "items": _nullable(NUM)}}),
)

SCHEMAS = {"data_stats": DATA_STATS_SCHEMA, "sft": SFT_RESULTS_SCHEMA, "rm": RM_RESULTS_SCHEMA,
           "ppo": PPO_RESULTS_SCHEMA}
FILE_NAMES = {"data_stats": "data_stats.json", "sft": "sft_results.json", "rm": "rm_results.json",
              "ppo": "ppo_experiment_results.json"}


def _schema_problems(obj, kind: str):
    """(json_path, message) of the most relevant schema violation, or None."""
    validator = jsonschema.Draft202012Validator(SCHEMAS[kind])
    error = best_match(validator.iter_errors(obj))
    return None if error is None else (error.json_path, error.message)


def _intervals(obj, kind: str):
    """Every [low, high] interval of a valid result, with its JSON path."""
    arms = obj.get("arms", {}) if kind in ("rm", "ppo") else {}
    names = {"rm": ["accuracy_ci95"], "ppo": ["gold_gain_vs_sft_ci95", "tax_vs_bf16_ci95",
                                              "gain_diff_vs_bf16_ci95"]}.get(kind, [])
    for arm, entry in arms.items():
        for name in names:
            if entry.get(name) is not None:
                yield f"$.arms.{arm}.{name}", entry[name]


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

    kind: "data_stats", "sft", "rm" or "ppo". source: the file it came from, for the message.
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
