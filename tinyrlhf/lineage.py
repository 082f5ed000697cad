"""Lineage: what a stage's result was made from and what it made, so that reuse can be trusted.

Every result records `lineage` = {"inputs": {upstream kind: that result's fingerprint}, "outputs": {path relative
to the workdir: {"bytes", "sha256"}}, "fingerprint": sha256 of the config hash, inputs and outputs}. A stage is
reused only when its config hash matches, the fingerprints of the upstream results it read are still the current
ones, and every output it recorded is on disk with the same size and digest (`stale_reason` says which failed).
Chained fingerprints make a change anywhere upstream reach every stage below it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .results import sha256_file

UPSTREAM = {"data_stats": (), "sft": ("data_stats",), "rm": ("sft",), "bon": ("sft", "rm"), "ppo": ("sft", "rm")}


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def describe_outputs(root: Path, outputs) -> dict[str, dict]:
    """Size and sha256 of every file of `outputs` (files or folders), keyed by its path relative to `root`."""
    root = Path(root).resolve()
    described = {}
    for out in outputs:
        for f in _files(Path(out)):
            described[f.resolve().relative_to(root).as_posix()] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    return described


def fingerprint(config_hash: str, inputs: dict, outputs: dict) -> str:
    blob = json.dumps({"config_hash": config_hash, "inputs": inputs, "outputs": outputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def record(config_hash: str, inputs: dict, root: Path, outputs) -> dict:
    described = describe_outputs(root, outputs)
    return {"inputs": inputs, "outputs": described, "fingerprint": fingerprint(config_hash, inputs, described)}


def fingerprint_of(result: dict | None) -> str | None:
    return ((result or {}).get("lineage") or {}).get("fingerprint")


def stale_reason(result: dict, root: Path, inputs: dict) -> str | None:
    """Why a finished result cannot be reused (one sentence), or None when it can."""
    lineage = result.get("lineage")
    if not lineage:
        return "it records no lineage (written by an older version)"
    changed = sorted(k for k in set(inputs) | set(lineage["inputs"]) if inputs.get(k) != lineage["inputs"].get(k))
    if changed:
        return f"its input{'s' if len(changed) > 1 else ''} {', '.join(changed)} changed since it ran"
    return output_problem(result, root)


def output_problem(result: dict, root: Path, under: str = "") -> str | None:
    """The first recorded output (below the workdir-relative folder `under`, when given) that is missing or no
    longer what was written, as one sentence; None when all verify."""
    root = Path(root)
    for rel, want in (result.get("lineage") or {}).get("outputs", {}).items():
        if under and not rel.startswith(under.rstrip("/") + "/"):
            continue
        f = root / rel
        if not f.is_file():
            return f"its output {rel} is missing"
        if f.stat().st_size != want["bytes"] or sha256_file(f) != want["sha256"]:
            return f"its output {rel} changed on disk (size or sha256 differ from what was recorded)"
    return None
