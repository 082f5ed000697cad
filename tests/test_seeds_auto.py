"""rm.seeds = "auto" through the stages (tinyrlhf.stages.seeds_until_resolved) on a copy of the tiny world: seeds
are added a paired set at a time until the headline half-width reaches the target or the cap, every model is
trained once across rounds, the choice is recorded and every later stage runs on the seeds chosen. The rule's
statistics (and its coverage) are tests/test_sequential.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tinyrlhf import stages
from tinyrlhf.config import get_profile
from tinyrlhf.results import read_json

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_WORLD

pytestmark = pytest.mark.slow
AUTO = TINY_WORLD | {"rm.seeds": "auto", "rm.seeds_min": 2, "rm.seeds_max": 3, "eval.second_judge": "none",
                     "eval.serve_bits": []}


@pytest.fixture
def world(tiny_world_copy):
    return tiny_world_copy


def test_seeds_are_added_until_the_cap_when_the_target_is_not_met_each_model_trained_once(world, monkeypatch):
    # The tiny world's int4 ranks as bf16 does (2 training steps): every half-width is 0. A target below 0 is never
    # met, and the rule itself (sequential.decide_from_bon) says so.
    real = stages.sequential.decide_from_bon
    monkeypatch.setattr(stages.sequential, "decide_from_bon", lambda bon, arms, **kw: real(bon, arms, **kw | {
        "target": -1.0}))
    profile = get_profile("cpu", overrides=AUTO)
    assert profile.rm.seeds == (0, 1, 2) and profile.rm.seeds_rule == "auto"
    with pytest.raises(stages.StaleInputError, match="has not chosen the reward-model seeds"):
        stages.resolve_seeds(profile, world)
    rm = stages.run_rm(profile, world, progress=False)
    rule = rm["seeds_rule"]
    assert rule["chosen"] == 3 == len(rm["seeds"]) and [h["seeds"] for h in rule["history"]] == [2, 3]
    assert not rule["history"][0]["stop"] and rule["history"][-1]["stop"]
    assert rule["history"][-1]["reason"].startswith("Cap reached: the target was not met at 3 seeds")
    # the second round trained only seed 2's models: seed 0's and 1's were kept from the first
    assert sorted(rm["kept_from_earlier_attempt"]) == sorted(f"{a}/seed{s}" for a in ("bf16", "int4") for s in (0, 1))
    # every later stage runs on the chosen seeds, and finds 03's results current
    chosen = stages.resolve_seeds(profile, world)
    assert chosen.rm.seeds == (0, 1, 2) and chosen.rm.seeds_chosen == 3
    bon = stages.run_bon(profile, world, progress=False)
    assert bon["reused"] and len(read_json(world.result("rm"))["seeds"]) == 3
    # a rerun of 03 reuses the choice without training or ranking again
    again = stages.run_rm(profile, world, progress=False)
    assert again["reused"] and again["seeds_rule"]["chosen"] == 3


def test_a_target_met_at_the_first_round_stops_there(world, monkeypatch):
    """The rule's verdict (tinyrlhf.sequential, tested on its own) says stop at once: the stages stop there. (The
    tiny world's reward models, 2 steps each, do not resolve bf16's gain: the rule itself would go on.)"""
    seen = []

    def stop_now(bon, arms, **kw):
        seen.append((sorted(arms), kw["seeds"], bon["manifest"]["seeds"]))
        return {"stop": True, "reason": "Resolved.", "seeds": kw["seeds"], "widest": ["int4", 0.0], "intervals": {}}
    monkeypatch.setattr(stages.sequential, "decide_from_bon", stop_now)
    profile = get_profile("cpu", overrides=AUTO)
    rm = stages.run_rm(profile, world, progress=False)
    assert seen == [(["int4", "served-int4"], 2, [0, 1])]  # the headline's arms, on the first round's result
    rule = rm["seeds_rule"]
    assert rule["chosen"] == 2 and len(rule["history"]) == 1 and rule["history"][0]["stop"]
    assert stages.resolve_seeds(profile, world).rm.seeds == (0, 1)
    assert read_json(world.result("bon"))["manifest"]["seeds"] == [0, 1]
