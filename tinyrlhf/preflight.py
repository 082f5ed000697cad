"""The preflight: minutes before the night, every stage's heaviest phase at the profile's real sizes on this machine,
so that a failure that would come at hour 3 comes at minute 5.

Each stage runs through the command a user runs (`tinyrlhf run STAGE`, its own process, so each peak is its own),
in a workdir of its own (`<workdir>/preflight`: the user's artifacts are never touched), with the profile's settings
except the counts no peak depends on: a few training steps, one reward-model seed (every arm and precision, the
judge included), one PPO update of one mini-batch against each arm, a pool and an evaluation of one sampling chunk.
Batch sizes, lengths, rollout chunks, micro-batches, dtypes and LoRA targets are the profile's. One verdict per
stage: whether it ran and every unit finished, its measured peak against this machine's capacity and beside the
estimate, and its seconds. On a CPU the same command runs the profile's code path end to end (a test runs it with a
small Qwen2 model folder).

    tinyrlhf preflight [--profile rtx4060] [--set SECTION.FIELD=VALUE ...]     (make preflight)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .config import Paths, Profile, get_paths, repo_root, resolve_device
from .results import atomic_write_json, manifest, read_json

STAGES = ("data", "sft", "rm", "bon", "ppo")
FILE = "preflight.json"
ABOVE_ESTIMATE = 1.2  # a measured peak this far over its estimate is said, though it fits
CAPACITY_SHARE = 0.95  # a peak past this share of the device's capacity is a failure waiting for a longer sequence


def settings(profile: Profile, steps: int = 2) -> dict:
    """The profile's settings with only the counts no peak depends on shrunk. The go/no-go is off (a few steps make
    reward models at chance: PPO's mechanics are what is checked); early stopping evaluates once, at the last step,
    on a few validation pairs at the profile's batch size."""
    e, p, r = profile.eval, profile.ppo, profile.rm
    stopping = {"rm.eval_every": steps, "rm.validation_pairs": min(r.validation_pairs, 32)} if r.early_stopping else {}
    return {"sft.max_steps": steps, "sft.accum": 1, "sft.eval_pairs": 16, "sft.sample_prompts": 4,
            "rm.max_steps": steps, "rm.accum": 1, "rm.eval_pairs": 32, "rm.seeds": [r.seeds[0]],
            "rm.control_seeds": 0, "ppo.steps": 1, "ppo.ppo_batch": p.mini_batch, "ppo.ppo_epochs": 1,
            "ppo.rm_seeds": 1, "ppo.runs_per_model": 1, "ppo.gate": False, "eval.prompts": min(e.prompts, 16),
            "eval.checkpoints": 1, "eval.bootstrap": 20, "eval.bon_pool": min(e.bon_pool, 8)} | stopping


def _units(stage: str, result: dict) -> tuple[list[str], list[dict]]:
    """(what failed, memory records) of a stage's result file."""
    failed, memory = [], []
    if stage == "sft":
        memory.append(result.get("memory"))
    elif stage == "rm":
        for mid, rec in result.get("models", {}).items():
            failed += [f"{mid}: {rec.get('reason')}"] if rec.get("status") != "ok" else []
            memory.append(rec.get("memory"))
    elif stage == "bon":
        failed += [f"{sid}: {rec.get('reason')}" for sid, rec in result.get("scorers", {}).items()
                   if rec.get("status") != "ok"]
    elif stage == "ppo":
        for arm, entry in result.get("arms", {}).items():
            for run in entry.get("seeds", []):
                failed += [f"{arm}: {run.get('reason')}"] if run.get("status") != "ok" else []
                memory.append(run.get("memory"))
    return failed, [m for m in memory if m]


def verdict(stage: str, returncode: int, error: str, result: dict | None, seconds: float,
            capacity_bytes: int) -> dict:
    """One stage's verdict from what its run left: "ok", "ok, above its estimate" or "fails", with the reason."""
    row = {"stage": stage, "seconds": seconds, "verdict": "ok", "reason": "", "peak_bytes": None,
           "estimate_bytes": None, "capacity_bytes": capacity_bytes}
    if returncode != 0 or result is None:
        return row | {"verdict": "fails", "reason": error or f"exit status {returncode}"}
    failed, memory = _units(stage, result)
    if memory:
        worst = max(memory, key=lambda m: m["measured_bytes"])
        row |= {"peak_bytes": worst["measured_bytes"], "estimate_bytes": worst["estimate_bytes"]}
    if failed:
        return row | {"verdict": "fails", "reason": "; ".join(failed)[:600]}
    if row["peak_bytes"] and row["peak_bytes"] > CAPACITY_SHARE * capacity_bytes:
        return row | {"verdict": "fails", "reason": f"its peak is {row['peak_bytes'] / capacity_bytes:.0%} of what "
                      "this device has: a longer batch would not fit; lower its batch size"}
    over = [m for m in memory if m["measured_bytes"] > ABOVE_ESTIMATE * m["estimate_bytes"]]
    if over:
        worst = max(over, key=lambda m: m["measured_bytes"] / m["estimate_bytes"])
        return row | {"verdict": "ok, above its estimate",
                      "reason": f"{worst['stage']} peaked at {worst['measured_bytes'] / worst['estimate_bytes']:.2f}x "
                                "its estimate (it fits)"}
    return row


def capacity(device: str) -> int:
    """Bytes a stage may use: the card's free memory, or the RAM."""
    import psutil
    import torch

    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    return psutil.virtual_memory().total


def _run_stage(stage: str, profile: Profile, where: Paths, sets: dict) -> tuple[int, str, float]:
    args = [f"--set={k}={json.dumps(v)}" for k, v in sets.items()]
    cmd = [sys.executable, "-m", "tinyrlhf", "run", stage, "--profile", profile.name, "--workdir", str(where.root),
           "--quiet", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=repo_root(), capture_output=True, text=True, env=dict(os.environ))
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")] or done.stderr.splitlines()[-1:]
    return done.returncode, (lines[-1] if lines else "")[:600], time.perf_counter() - t0


def run(profile: Profile, paths: Paths, *, overrides: dict | None = None, steps: int = 2, report=print) -> dict:
    """Run the preflight for `profile` (settings as given plus `overrides`, e.g. a base model folder) and write
    `results/preflight.json`; returns what it wrote. Stops at the first stage that fails: the ones after it need
    its outputs."""
    sets = settings(profile, steps) | (overrides or {})
    where = get_paths(paths.root / "preflight").make()
    device = resolve_device(profile)
    cap = capacity(device)
    rows = []
    for stage in STAGES:
        report(f"preflight: {stage} ...")
        code, error, seconds = _run_stage(stage, profile, where, sets)
        kind = {"data": "data_stats"}.get(stage, stage)
        result = read_json(where.result(kind)) if code == 0 and where.result(kind).exists() else None
        rows.append(verdict(stage, code, error, result, seconds, cap))
        report(f"preflight: {stage} {rows[-1]['verdict']} in {seconds:.0f} s {rows[-1]['reason']}".rstrip())
        if rows[-1]["verdict"] == "fails":
            break
    rows += [{"stage": s, "verdict": "not run", "reason": f"after {rows[-1]['stage']} failed", "seconds": None}
             for s in STAGES[len(rows):]]
    out = {"profile": profile.name, "device": device, "settings": sets, "stages": rows,
           "ready": all(r["verdict"].startswith("ok") for r in rows),
           "manifest": manifest(profile, "preflight", timings={r["stage"]: r["seconds"] for r in rows})}
    atomic_write_json(paths.results / FILE, out)
    return out


def sentence(out: dict) -> str:
    """The preflight's answer in one sentence."""
    if out["ready"]:
        total = sum(r["seconds"] or 0 for r in out["stages"])
        return (f"Preflight passed on {out['device']} in {total / 60:.1f} min: every stage's heaviest phase ran at "
                f"the {out['profile']} profile's sizes and fits.")
    bad = next(r for r in out["stages"] if not r["verdict"].startswith("ok"))
    return (f"Preflight FAILED at {bad['stage']}: {bad['reason']}. Fix this before `make run` (it would have failed "
            "there after hours of the stages before it).")


def wanted(asked: bool | None, profile: Profile, report: dict) -> tuple[bool, str]:
    """Whether 00_Setup runs the preflight, and why: as asked (its PREFLIGHT parameter), else on a GPU profile with
    a card (minutes there); never unasked on a CPU, where the cpu profile's whole run is the check."""
    if asked is not None:
        return asked, "PREFLIGHT is set"
    if profile.device != "cpu" and report["cuda"]["available"]:
        return True, f"a card and the {profile.name} profile: minutes now instead of a failure hours into the night"
    return False, (f"the {profile.name} profile on {'this card' if report['cuda']['available'] else 'the CPU'}: "
                   "nothing long to check first (set PREFLIGHT = True, or run `make preflight`, to run it anyway)")
