"""Reuse that can be trusted: a stage is reused only when its settings, its inputs' fingerprints and its outputs on
disk all match what it recorded; otherwise it reruns, or stops naming the upstream stage to rerun."""

import json
import shutil

import pytest
from conftest import HH_DIR, TINY_WORLD, requires_hh

from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.results import WorkdirBusyError, read_json, workdir_lock

pytestmark = pytest.mark.slow
SETTINGS = TINY_WORLD


@pytest.fixture
def world(tiny_world, tmp_path):
    """A private copy of the tiny workdir (data, sft, rm done): (profile, paths)."""
    profile, paths = tiny_world
    shutil.copytree(paths.root, tmp_path / "copy")
    return profile, get_paths(tmp_path / "copy")


def test_results_record_their_inputs_and_outputs(world):
    profile, paths = world
    sft, rm = read_json(paths.result("sft")), read_json(paths.result("rm"))
    assert rm["lineage"]["inputs"] == {"sft": sft["lineage"]["fingerprint"]}
    assert sft["lineage"]["inputs"] == {"data_stats": read_json(paths.result("data_stats"))["lineage"]["fingerprint"]}
    assert "models/sft/merged/model.safetensors" in sft["lineage"]["outputs"]
    assert "models/rm/int4/seed0/adapter_model.safetensors" in rm["lineage"]["outputs"]
    assert all(not k.startswith("/") for k in rm["lineage"]["outputs"])  # relative to the workdir


def test_changed_upstream_settings_stop_the_stage_below_naming_what_to_rerun(world):
    from tinyrlhf.stages import StaleInputError, run_rm, run_sft

    profile, paths = world
    changed = get_profile("cpu", overrides=SETTINGS | {"sft.max_steps": 3})
    with pytest.raises(StaleInputError, match=r"sft stage's results: its settings changed.*02_SFT_Finetuning"):
        run_rm(changed, paths, progress=False)
    assert run_sft(changed, paths, progress=False)["reused"] is False
    assert run_rm(changed, paths, progress=False)["reused"] is False


def test_a_truncated_model_is_never_reused(world):
    from tinyrlhf.stages import StaleInputError, run_rm, run_sft

    profile, paths = world
    weights = paths.sft_merged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(StaleInputError, match="models/sft/merged/model.safetensors changed on disk"):
        run_rm(profile, paths, progress=False)
    before = read_json(paths.result("sft"))["lineage"]["fingerprint"]
    assert run_sft(profile, paths, progress=False)["reused"] is False  # rebuilt, not reused
    same = read_json(paths.result("sft"))["lineage"]["fingerprint"] == before
    assert run_rm(profile, paths, progress=False)["reused"] is same  # reward models follow their SFT model


def test_a_missing_reward_model_file_reruns_the_reward_models(world):
    from tinyrlhf.stages import run_rm

    profile, paths = world
    (paths.rm("int4", 0) / "adapter_model.safetensors").unlink()
    assert run_rm(profile, paths, progress=False)["reused"] is False
    assert (paths.rm("int4", 0) / "adapter_model.safetensors").exists()


@requires_hh
def test_a_changed_data_source_reruns_everything_below(world, monkeypatch):
    """Switching to TINYRLHF_HH_DIR is not a setting: the data stage's fingerprint carries it downstream."""
    from tinyrlhf.stages import StaleInputError, run_data, run_rm, run_sft

    profile, paths = world
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(HH_DIR))
    assert run_data(profile, paths, progress=False)["source"] == "local"
    with pytest.raises(StaleInputError, match="the sft stage's results: its input data_stats changed"):
        run_rm(profile, paths, progress=False)
    assert run_sft(profile, paths, progress=False)["reused"] is False
    assert read_json(paths.result("sft"))["lineage"]["inputs"]["data_stats"] == \
        read_json(paths.result("data_stats"))["lineage"]["fingerprint"]


def test_a_moved_workdir_is_reused_and_loads_its_own_models(world, tmp_path):
    from tinyrlhf.reward import load_reward_model
    from tinyrlhf.stages import run_rm

    profile, paths = world
    moved = get_paths(tmp_path / "moved")
    shutil.move(paths.root, moved.root)
    info = json.loads((moved.rm("bf16", 0) / "precision.json").read_text())
    assert not info["init_path"].startswith("/")
    model, _ = load_reward_model(moved.rm("bf16", 0))
    assert model is not None
    assert run_rm(profile, moved, progress=False)["reused"] is True


def test_a_second_run_on_the_same_workdir_is_refused_naming_the_holder(world):
    from tinyrlhf.stages import run_data

    profile, paths = world
    with workdir_lock(paths.root):
        with pytest.raises(WorkdirBusyError, match=r"another tinyrlhf run \(PID \d+\) is using the workdir"):
            run_data(profile, paths, progress=False)
    assert run_data(profile, paths, progress=False)["reused"] is True  # released afterwards


def test_a_full_disk_is_one_sentence(world, monkeypatch):
    import errno

    from tinyrlhf import stages

    profile, paths = world

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stages, "_prepare_data", no_space)
    with pytest.raises(stages.DiskFullError, match="is full: free space"):
        stages.run_data(profile, paths, force=True, progress=False)


def test_a_model_write_killed_midway_leaves_the_previous_folder(tmp_path):
    """The write of a model folder, killed with SIGKILL halfway: the final name still holds the previous model, and
    the next write clears what the killed one left behind."""
    import signal
    import subprocess
    import sys

    from tinyrlhf.results import PARTIAL, atomic_folder

    final = tmp_path / "models" / "rm" / "int4"
    final.mkdir(parents=True)
    (final / "adapter_model.safetensors").write_text("previous")
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom tinyrlhf.results import atomic_folder\n"
        f"with atomic_folder({str(final)!r}) as d:\n"
        "    (d / 'adapter_model.safetensors').write_text('half')\n"
        "    print('writing', flush=True)\n    time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert (final / "adapter_model.safetensors").read_text() == "previous"
    assert list(final.parent.glob(f".int4{PARTIAL}*"))  # the killed writer's leftovers
    with atomic_folder(final) as d:
        (d / "adapter_model.safetensors").write_text("new")
    assert (final / "adapter_model.safetensors").read_text() == "new"
    assert sorted(p.name for p in final.parent.iterdir()) == ["int4"]


def test_a_failed_model_write_keeps_the_previous_folder(tmp_path):
    from tinyrlhf.results import atomic_folder

    final = tmp_path / "merged"
    final.mkdir()
    (final / "model.safetensors").write_text("previous")
    with pytest.raises(OSError, match="No space"):
        with atomic_folder(final) as d:
            (d / "model.safetensors").write_text("half")
            raise OSError(28, "No space left on device")
    assert (final / "model.safetensors").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_a_broken_reward_model_is_that_arms_failure_and_the_others_run(world):
    from tinyrlhf.ppo import PPOError
    from tinyrlhf.stages import run_ppo

    profile, paths = world
    (paths.rm("int4", 0) / "adapter_model.safetensors").unlink()
    result = run_ppo(profile, paths, progress=False)
    assert [r["status"] for r in result["arms"]["bf16"]["seeds"]] == ["ok"] * len(profile.rm.seeds)
    int4 = result["arms"]["int4"]
    assert [r["status"] for r in int4["seeds"]] == ["failed", "ok"] and int4["status"] == "partial"
    reason = int4["seeds"][0]["reason"]
    assert "models/rm/int4/seed0/adapter_model.safetensors is missing" in reason and "03_Reward_Modeling" in reason
    assert int4["paired_seeds"] == [1]  # the failed seed is dropped from the comparison with bf16
    for seed in profile.rm.seeds:
        (paths.rm("bf16", seed) / "adapter_model.safetensors").write_bytes(b"broken")
    with pytest.raises(PPOError, match="every bf16 reward model"):
        run_ppo(profile, paths, progress=False)


def test_an_interrupted_ppo_stage_keeps_the_runs_it_finished(world, monkeypatch):
    from tinyrlhf import stages

    profile, paths = world
    calls = []
    first = stages.run_ppo(profile, paths, progress=False, on_run=calls.append)
    # 04 redraws as each policy finishes: one call per policy (the SFT evaluation and every run), each a row longer
    assert [len(c) for c in calls] == list(range(1, 2 + len(stages.ppo_runs(profile))))
    by_run = {(r["policy"], r["seed"]): r["judge_mean"] for r in calls[-1]}
    for arm, entry in first["arms"].items():
        for s in entry["seeds"]:
            assert by_run[(arm, s["seed"])] == s["judge_mean"]
    assert by_run[("sft", profile.seed)] == first["sft"]["judge_mean"]
    paths.result("ppo").unlink()  # killed after the runs, before the stage's result was written
    trained = []
    original = stages._train_and_evaluate
    monkeypatch.setattr(stages, "_train_and_evaluate", lambda job, report: trained.append(job["arm"]) or original(
        job, report))
    seeds = [seed for arm, _, seed in stages.ppo_runs(profile) if arm == "int4"]
    (paths.policy("int4", seeds[-1]) / stages.RUN_FILE).unlink()  # this run was not finished
    again = stages.run_ppo(profile, paths, progress=False)
    assert trained == ["int4"]
    for arm in ("bf16", "int4"):
        assert again["arms"][arm]["gold_gain_vs_sft"] == first["arms"][arm]["gold_gain_vs_sft"]
    stages.run_ppo(profile, paths, force=True, progress=False)
    assert len(trained) == 1 + len(stages.ppo_runs(profile))  # forced: every run trained again
    seed = seeds[0]
    assert stages.finished_run(paths.policy("bf16", seed), "other settings") is None  # kept only for the same key
    assert stages.finished_run(paths.policy("bf16", seed), json.loads(
        (paths.policy("bf16", seed) / stages.RUN_FILE).read_text())["key"]) is not None
