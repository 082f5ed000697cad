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

from .config import PRECISIONS
from .results import read_json

DRAFT = "https://json-schema.org/draft/2020-12/schema"


class SchemaError(ValueError):
    """A result that does not match its schema; the message names the file (if known) and the JSON path."""


# Small builders, so that the schemas below read as lists of fields.
def _obj(required=(), **properties) -> dict:
    return {"type": "object", "required": list(required), "properties": properties}


def _nullable(schema: dict) -> dict:
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


def _by_precision(entry: dict) -> dict:
    return {"type": "object", "propertyNames": {"enum": list(PRECISIONS)}, "minProperties": 1,
            "additionalProperties": entry}


MANIFEST_SCHEMA = {
    "$schema": DRAFT,
    "title": "manifest: how a result was produced",
    **_obj(["stage", "profile", "config", "seeds", "packages", "git_commit", "hardware", "timings", "peak_memory",
            "data_source"],
           stage=STR, profile=STR, config=OBJECT, seeds={"type": "array", "items": INT}, packages=OBJECT,
           git_commit=_nullable(STR), hardware=OBJECT, timings=OBJECT, peak_memory=OBJECT, data_source=OBJECT),
}


def _result_schema(title: str, required: list[str], **properties) -> dict:
    """Top level of a result file; the manifest schema is embedded under $defs so each schema stands alone."""
    manifest = {k: v for k, v in MANIFEST_SCHEMA.items() if k != "$schema"}
    return {"$schema": DRAFT, "title": title, "$defs": {"manifest": manifest},
            **_obj(["config_hash", "manifest", *required], config_hash=STR, manifest={"$ref": "#/$defs/manifest"},
                   **properties)}


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

RM_METRICS = {
    "accuracy": UNIT, "accuracy_ci95": _interval(UNIT), "mean_margin": NUM,
    "agreement_with_bf16": UNIT, "rank_correlation_with_bf16": {"type": "number", "minimum": -1, "maximum": 1},
    "footprint_bytes": NONNEG_INT, "train_seconds": NONNEG, "peak_memory_bytes": NONNEG_INT,
    "throughput_pairs_per_s": NONNEG, "compute_dtype": STR, "loss_curve": {"type": "array", "items": _nullable(NUM)},
    "n_test_pairs": {"type": "integer", "minimum": 1},
}
RM_RESULTS_SCHEMA = _result_schema(
    "rm_results.json: one reward model per precision", ["precisions"],
    # Comparisons with bf16 stay nullable: there is nothing to compare with when bf16 itself failed.
    precisions=_by_precision(_run_entry(["ok", "failed"], ["ok"], RM_METRICS,
                                        keep_nullable=("agreement_with_bf16", "rank_correlation_with_bf16"))),
)

SAMPLES = {"type": "array", "items": _obj(["prompt", "response", "judged_reward"], prompt=STR, response=STR,
                                          judged_reward=_nullable(NUM))}
HISTORY_ROW = _obj(["step", "reward", "kl"], step=NONNEG_INT, reward=_nullable(NUM), kl=_nullable(NUM),
                   entropy=_nullable(NUM), policy_loss=_nullable(NUM), value_loss=_nullable(NUM),
                   clipfrac=_nullable(NUM), seconds=_nullable(NONNEG))
SEED_METRICS = {"judged_reward_mean": NUM, "own_reward_mean": NUM, "kl_mean": NUM, "win_rate_vs_sft": UNIT,
                "response_length_mean": NONNEG, "train_seconds": NONNEG, "peak_memory_bytes": NONNEG_INT}
# A finished seed has a history; a failed one may keep what it logged before failing, or null.
SEED_RUN = _run_entry(["ok", "failed"], ["ok"], {**SEED_METRICS, "history": {"type": "array", "items": HISTORY_ROW}},
                      required=["seed"], seed=INT, samples=_nullable(SAMPLES))

PPO_METRICS = {
    "judged_reward_mean": NUM, "judged_reward_std": NONNEG, "judged_reward_ci95": _interval(NUM),
    "own_reward_mean": NUM, "gain_vs_sft": NUM, "tax_vs_bf16": NUM, "tax_vs_bf16_ci95": _interval(NUM),
    "kl_mean": NUM, "win_rate_vs_sft": UNIT, "response_length_mean": NONNEG, "train_seconds_mean": NONNEG,
    "peak_memory_bytes_max": NONNEG_INT,
}
PPO_RESULTS_SCHEMA = _result_schema(
    "ppo_experiment_results.json: PPO against each reward model", ["judge", "sft", "precisions", "cross_matrix"],
    judge={"enum": list(PRECISIONS)},
    sft=_obj(["judged_reward_mean", "judged_reward_std", "response_length_mean", "samples"],
             judged_reward_mean=NUM, judged_reward_std=_nullable(NONNEG), response_length_mean=NONNEG,
             samples=SAMPLES),
    # "partial": some seeds failed; the aggregates cover the finished ones. One finished seed has no spread,
    # and there is no tax when bf16 failed, hence those stay nullable.
    precisions=_by_precision(_run_entry(
        ["ok", "partial", "failed"], ["ok", "partial"], PPO_METRICS, required=["seeds"],
        keep_nullable=("judged_reward_std", "judged_reward_ci95", "tax_vs_bf16", "tax_vs_bf16_ci95"),
        seeds={"type": "array", "items": SEED_RUN})),
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
    precisions = obj.get("precisions", {}) if kind in ("rm", "ppo") else {}
    names = {"rm": ["accuracy_ci95"], "ppo": ["judged_reward_ci95", "tax_vs_bf16_ci95"]}.get(kind, [])
    for p, entry in precisions.items():
        for name in names:
            if entry.get(name) is not None:
                yield f"$.precisions.{p}.{name}", entry[name]


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
