"""A public judge named by hub id, pinned without the hub: its first load in a workdir records the commit it got
(models/hub-pins.json) and every later load there takes that commit, whatever the hub serves by then; an explicit
eval.judge_revision or a PINNED_REVISIONS entry wins over the pin file; "latest" stays unpinned. No hub here: tiny
Llama reward models are laid out in a hub cache of our own, as the hub lays out its downloads, and read offline.
And the rtx4060 profiles' judge is such a model (Skywork-Reward-V2-Llama-3.2-1B), so their arms train on every
training pair, with no heldout judge."""

from __future__ import annotations

import datetime
import shutil

import pytest
import torch
from test_external_judge import PROMPTS, REPLIES, _rollouts, _save_judge

from tinyrlhf import config, evaluate
from tinyrlhf.base_model import ModelLoadError
from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.results import read_json
from tinyrlhf.stages import JUDGE_ARM, RM, config_hash, judge_spec, rm_models

REPO = "tiny-org/tiny-reward"
SHA_A, SHA_B = "a" * 40, "b" * 40
SKYWORK = "Skywork/Skywork-Reward-V2-Llama-3.2-1B"


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """Two commits of one tiny reward model: B's score head is A's negated, so every score tells them apart."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("commits")
    a = _save_judge(root / "a", template=True)
    shutil.copytree(a, root / "b")
    model = AutoModelForSequenceClassification.from_pretrained(a, dtype=torch.float32)
    with torch.no_grad():
        model.score.weight.neg_()
    model.save_pretrained(root / "b")
    return {SHA_A: a, SHA_B: root / "b"}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline hub cache of our own: huggingface_hub reads its cache and offline mode at call time (and a
    subprocess from the environment)."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def publish(cache, repo: str, sha: str, folder) -> None:
    """`folder` as commit `sha` of `repo` in the cache, the default branch moved to it: models--ORG--NAME/
    snapshots/<sha>/ holds the files, refs/main the commit."""
    where = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, where / "snapshots" / sha, dirs_exist_ok=True)
    (where / "refs").mkdir(parents=True, exist_ok=True)
    (where / "refs" / "main").write_text(sha)


def _scores(spec: dict) -> list[float]:
    judge = evaluate.load_judge(spec, cpu_dtype="fp32")  # as the stages load it: from the spec's commit
    return judge.scores(_rollouts(list(zip(PROMPTS, REPLIES))), eos_token_id=0, missing_eos_penalty=1.0)


def test_the_first_load_pins_the_commit_it_got_and_every_later_load_takes_it(hub, snapshots, tmp_path):
    publish(hub, REPO, SHA_A, snapshots[SHA_A])
    profile = get_profile("cpu", overrides={"eval.judge": REPO})
    assert profile.eval.judge_revision == config.FIRST_DOWNLOAD  # a hub id PINNED_REVISIONS does not list
    paths = get_paths(tmp_path / "work")
    first = judge_spec(profile, paths, {})
    today = datetime.date.today().isoformat()
    assert read_json(paths.hub_pins) == {REPO: {"revision": SHA_A, "pinned_at": today}}
    assert first["revision"] == SHA_A and first["pinned"] == f"pinned at first download, models/hub-pins.json ({today})"
    pinned_scores = _scores(first)
    publish(hub, REPO, SHA_B, snapshots[SHA_B])  # the hub moves on
    later = judge_spec(profile, paths, {})
    assert later["revision"] == SHA_A and _scores(later) == pytest.approx(pinned_scores, abs=1e-6)
    assert read_json(paths.hub_pins)[REPO]["revision"] == SHA_A
    # a workdir that had no pin gets the newest commit, which scores otherwise: the pin is what kept A
    fresh = judge_spec(profile, get_paths(tmp_path / "other-work"), {})
    assert fresh["revision"] == SHA_B and _scores(fresh) == pytest.approx([-s for s in pinned_scores], abs=1e-5)
    assert pinned_scores != pytest.approx([-s for s in pinned_scores], abs=1e-3)


def test_an_explicit_or_listed_commit_wins_over_the_pin_and_latest_stays_unpinned(hub, snapshots, tmp_path,
                                                                                    monkeypatch):
    publish(hub, REPO, SHA_A, snapshots[SHA_A])
    paths = get_paths(tmp_path / "work")
    assert judge_spec(get_profile("cpu", overrides={"eval.judge": REPO}), paths, {})["revision"] == SHA_A  # pinned
    publish(hub, REPO, SHA_B, snapshots[SHA_B])
    a_scores = _scores({"kind": "external", "path": REPO, "revision": SHA_A})
    explicit = judge_spec(get_profile("cpu", overrides={"eval.judge": REPO, "eval.judge_revision": SHA_B}), paths, {})
    assert (explicit["revision"], explicit["pinned"]) == (SHA_B, "eval.judge_revision")
    assert _scores(explicit) == pytest.approx([-s for s in a_scores], abs=1e-5)
    monkeypatch.setitem(config.PINNED_REVISIONS, REPO, SHA_B)
    listed = judge_spec(get_profile("cpu", overrides={"eval.judge": REPO}), paths, {})
    assert (listed["revision"], listed["pinned"]) == (SHA_B, "PINNED_REVISIONS")
    monkeypatch.delitem(config.PINNED_REVISIONS, REPO)
    latest = judge_spec(get_profile("cpu", overrides={"eval.judge": REPO, "eval.judge_revision": "latest"}), paths, {})
    assert latest["revision"] == "unpinned" and "newest commit, at every load" in latest["pinned"]
    assert _scores(latest) == pytest.approx([-s for s in a_scores], abs=1e-5)  # whatever the hub serves now: B
    assert read_json(paths.hub_pins) == {REPO: {"revision": SHA_A, "pinned_at": datetime.date.today().isoformat()}}


def test_a_hub_id_that_cannot_be_fetched_fails_in_one_line_before_any_pin(hub, tmp_path):
    paths = get_paths(tmp_path / "work")
    with pytest.raises(ModelLoadError, match=r"eval.judge='no-org/no-model': cannot fetch its config to pin its "
                                             r"commit .*Set eval.judge to") as e:
        judge_spec(get_profile("cpu", overrides={"eval.judge": "no-org/no-model"}), paths, {})
    assert "\n" not in str(e.value) and not paths.hub_pins.exists()


def test_the_rtx4060_profiles_judge_is_a_public_model_of_another_family_and_the_arms_train_on_every_pair():
    for name in ("rtx4060", "rtx4060_study"):
        profile = get_profile(name)
        assert profile.eval.judge == SKYWORK and profile.base.model == "Qwen/Qwen2.5-0.5B"
        assert profile.eval.judge_revision == config.PINNED_REVISIONS.get(SKYWORK, config.FIRST_DOWNLOAD)
        models = rm_models(profile)
        assert JUDGE_ARM not in models and {m["half"] for m in models.values()} == {"a"}  # "a" alone: every pair
        assert not config_hash(RM, profile).endswith(":halves")
    heldout = get_profile("rtx4060", overrides={"eval.judge": "heldout"})  # still an option
    assert JUDGE_ARM in rm_models(heldout) and config_hash(RM, heldout).endswith(":halves")
