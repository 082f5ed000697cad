"""Shared fixtures: a temporary workdir per session and, for the end-to-end tests, the whole cpu pipeline once."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """Every stage of the cpu profile, run once in a temporary workdir: (profile, paths, results by stage)."""
    from tinyrlhf.config import get_paths, get_profile
    from tinyrlhf.stages import run_data, run_ppo, run_rm, run_sft

    saved = {k: os.environ.pop(k) for k in ("TINYRLHF_HH_DIR", "TINYRLHF_OVERRIDES") if k in os.environ}
    try:
        profile = get_profile("cpu")
        paths = get_paths(tmp_path_factory.mktemp("pipeline")).make()
        out = {"data": run_data(profile, paths, progress=False)}
        out["sft"] = run_sft(profile, paths, progress=False)
        out["rm"] = run_rm(profile, paths, progress=False)
        out["ppo"] = run_ppo(profile, paths, progress=False)
    finally:
        os.environ.update(saved)
    return profile, paths, out
