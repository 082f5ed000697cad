"""Shared fixtures: a temporary workdir per session and, for the end-to-end tests, the whole cpu pipeline once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

HH_DIR = Path(__file__).resolve().parents[2] / "shared" / "hh-rlhf"
HH_FILE = HH_DIR / "harmless-base" / "test.jsonl.gz"


@pytest.fixture(autouse=True)
def _no_user_env(monkeypatch):
    """Tests never read or write a user's artifacts or pick up their overrides."""
    for var in ("TINYRLHF_PROFILE", "TINYRLHF_WORKDIR", "TINYRLHF_HH_DIR", "TINYRLHF_OVERRIDES", "TINYRLHF_FORCE"):
        monkeypatch.delenv(var, raising=False)


def hh_available() -> bool:
    return HH_FILE.exists()


requires_hh = pytest.mark.skipif(not HH_FILE.exists(),
                                 reason=f"real HH-RLHF sample not found at {HH_FILE}: skipping the real-data part")


# A whole pipeline in seconds: too short to learn anything, long enough to produce every artifact for real.
TINY = {"data.synthetic_pairs": 240, "base.pretrain_steps": 4, "base.pretrain_dialogues": 200, "sft.max_steps": 2,
        "rm.max_steps": 2, "rm.eval_pairs": 16, "ppo.steps": 2, "rm.seeds": [0, 1], "ppo.ppo_batch": 8,
        "ppo.mini_batch": 4, "ppo.micro_batch": 2, "ppo.rollout_chunk": 8, "eval.prompts": 6, "eval.samples": 2,
        "eval.checkpoints": 2, "eval.bootstrap": 50, "eval.bon_pool": 4, "workers": 1}


# The tiny world's own settings: two precisions, no controls (TINY's 2 reward-model seeds each)
TINY_WORLD = TINY | {"rm.precisions": ["bf16", "int4"], "rm.null_arm": False, "rm.noisy_arm": False}


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """data, sft and rm (bf16 and int4) of the cpu profile with TINY settings: (profile, paths)."""
    from tinyrlhf.config import get_paths, get_profile
    from tinyrlhf.stages import run_data, run_rm, run_sft

    profile = get_profile("cpu", overrides=TINY_WORLD)
    paths = get_paths(tmp_path_factory.mktemp("tiny")).make()
    run_data(profile, paths, progress=False)
    run_sft(profile, paths, progress=False)
    run_rm(profile, paths, progress=False)
    return profile, paths


@pytest.fixture
def tiny_world_copy(tiny_world, tmp_path):
    """A copy of the tiny world's work folder, for a test that changes results or models: its Paths."""
    from tinyrlhf.config import get_paths

    _, paths = tiny_world
    shutil.copytree(paths.root, tmp_path / "copy")
    return get_paths(tmp_path / "copy")


# The end-to-end run: the cpu profile with 3 reward-model seeds per arm, 32 x 4 evaluation replies, a pool of 16 and
# neither control arm instead of 5, 48 x 8, 64 and both, enough to see learning (asserted in test_pipeline.py) in
# about a third of the time (the suite's 25 minutes). The controls' plumbing runs with TINY settings
# (test_any_causal_lm's qwen2 case; test_real_data.py on the real sample), their statistics in the unit tests; what the
# instrument finds with them is the cpu profile's measurement (docs/results-log.md).
E2E = {"rm.seeds": [0, 1, 2], "rm.null_arm": False, "rm.noisy_arm": False, "eval.prompts": 32, "eval.samples": 4, "eval.bootstrap": 500,
       "eval.bon_pool": 16}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """All five notebooks, executed top to bottom as `make run` executes them (cpu profile, E2E settings, parameters
    injected after the parameters cell): (profile, paths, results by stage, folder of the executed notebooks)."""
    from tinyrlhf import run_notebooks as rn
    from tinyrlhf.config import get_paths, get_profile
    from tinyrlhf.results import read_json

    root = tmp_path_factory.mktemp("pipeline")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYRLHF_")}
    env |= {"TINYRLHF_PROFILE": "cpu", "TINYRLHF_WORKDIR": str(root), "TINYRLHF_OVERRIDES": json.dumps(E2E)}
    outcomes = rn.run(rn.discover(REPO), out_dir=root / "executed", cwd=REPO, timeout=3600, env=env,
                      parameters={"PROFILE": "cpu", "WORKDIR": str(root)})
    failed = [f"{o.name}: {o.error}" for o in outcomes if o.status != "ok"]
    assert not failed, failed
    profile, paths = get_profile("cpu", overrides=E2E), get_paths(root)
    results = {kind: read_json(paths.result(kind)) for kind in ("data_stats", "sft", "rm", "bon", "ppo")}
    return profile, paths, results, root / "executed"
