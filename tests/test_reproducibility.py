"""Same seed and profile give the same numbers on CPU; another seed gives other numbers."""

import pytest

from tinyrlhf.config import get_paths, get_profile

pytestmark = pytest.mark.slow

SMALL = {"base.pretrain_steps": 15, "sft.max_steps": 4}


def _run(tmp_path, name, **kw):
    from tinyrlhf.data import prepare_data
    from tinyrlhf.sft import run_sft

    profile = get_profile("cpu", overrides=SMALL, **kw)
    paths = get_paths(tmp_path / name).make()
    prepare_data(profile, paths, progress=False)
    result = run_sft(profile, paths, progress=False)
    adapter = (paths.models / "sft" / "adapter" / "adapter_model.safetensors").read_bytes()
    return result, adapter


def test_same_seed_same_numbers(tmp_path):
    a, adapter_a = _run(tmp_path, "a")
    b, adapter_b = _run(tmp_path, "b")
    assert a["before"] == b["before"] and a["after"] == b["after"]
    assert a["loss_curve"] == b["loss_curve"] and a["generations"] == b["generations"]
    assert adapter_a == adapter_b
    c, adapter_c = _run(tmp_path, "c", seed=1)
    assert c["after"]["loss"] != a["after"]["loss"] and adapter_c != adapter_a
