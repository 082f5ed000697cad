"""The command-line stages under `accelerate launch` with two CPU processes (gloo): SFT, a bf16 and an int4 reward
model and PPO train on both ranks in step, the main process writes every output once, the results validate, and
the 2-process SFT loss at the same global batch is the 1-process loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyrlhf import schema

pytestmark = pytest.mark.slow

# Small settings: global batches that split over 2 ranks; no dropout in SFT, so the 1- and 2-process runs see the
# same computation (LoRA dropout masks are drawn per rank).
SMALL = {"data.synthetic_pairs": 240, "base.pretrain_steps": 4, "base.pretrain_dialogues": 200, "sft.max_steps": 6,
         "sft.batch_size": 8, "sft.dropout": 0.0, "sft.eval_pairs": 16, "sft.sample_prompts": 2,
         "rm.precisions": ["bf16", "int4"], "rm.null_arm": False, "rm.noisy_arm": False, "rm.max_steps": 3, "rm.batch_size": 8,
         "rm.eval_pairs": 16, "rm.seeds": [0], "ppo.steps": 2, "ppo.ppo_batch": 8, "ppo.mini_batch": 4,
         "ppo.micro_batch": 2, "ppo.rollout_chunk": 8, "eval.prompts": 6, "eval.samples": 2, "eval.checkpoints": 2,
         "eval.bootstrap": 50, "eval.bon_pool": 8}
# The shipped DDP configuration, as docs/scale-out.md runs it. On a CPU host it starts two processes and tinyrlhf forms the
# gloo group (distributed.init); `--cpu` instead makes accelerate 1.15 start one process (its simple launcher).
# Port 0: a free one, whatever else runs.
REPO = Path(__file__).resolve().parents[1]
LAUNCH = ["-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" / "ddp.yaml"),
          "--num_processes", "2", "--main_process_port", "0"]


def _tinyrlhf(args: list[str], workdir: Path, tmp: Path, launch: bool) -> subprocess.CompletedProcess:
    sets = [a for k, v in SMALL.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    argv = [sys.executable, *(LAUNCH if launch else []), "-m", "tinyrlhf", "run", *args, "--profile", "cpu",
            "--workdir", str(workdir), "-q", *sets]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYRLHF_", "WORLD_SIZE", "RANK"))}
    env |= {"TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    root = tmp_path_factory.mktemp("accelerate")
    (root / "tmp").mkdir()
    done = _tinyrlhf([], root / "two", root / "tmp", launch=True)
    return root, done


def _results(workdir: Path) -> dict:
    return {kind: json.loads((workdir / "results" / name).read_text()) for kind, name in
            (("sft", "sft_results.json"), ("rm", "rm_results.json"), ("bon", "bon_results.json"),
             ("ppo", "ppo_experiment_results.json"))}


def _assert_ranks_trained_in_step(ranks: list[dict], steps: int):
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["training_rows"] > 0 and r["optimizer_steps"] == steps for r in ranks)
    assert ranks[0]["first_batch_token_sum"] != ranks[1]["first_batch_token_sum"]  # each rank its own shard
    checksums = [r["trained_weights_checksum"] for r in ranks]
    assert checksums[0] == pytest.approx(checksums[1], rel=1e-9, abs=1e-9) and checksums[0] != 0  # in step


def test_every_stage_trains_on_both_ranks_and_writes_once(launched):
    root, done = launched
    results = _results(root / "two")
    for kind, result in results.items():
        schema.validate(result, kind)
        assert result["manifest"]["distributed"]["world_size"] == 2
    _assert_ranks_trained_in_step(results["sft"]["ranks"], SMALL["sft.max_steps"])
    for arm in ("bf16", "int4"):
        rec = results["rm"]["models"][f"{arm}/seed0"]
        assert rec["status"] == "ok", rec.get("reason")
        _assert_ranks_trained_in_step(rec["ranks"], SMALL["rm.max_steps"])
    for arm in ("bf16", "int4"):
        (run,) = results["ppo"]["arms"][arm]["seeds"]
        assert run["status"] == "ok", run.get("reason")
        _assert_ranks_trained_in_step(run["ranks"], SMALL["ppo.steps"])
    # written once, by the main process: no partial folders, nothing left in the other rank's scratch
    assert not list((root / "two").rglob(".*.partial*"))
    assert not list((root / "tmp").glob("tinyrlhf-rank*"))
    assert done.stdout.count("ppo: computed") == 1  # the main process alone reports


def test_two_process_sft_loss_matches_one_process_at_the_same_global_batch(launched):
    root, _ = launched
    _tinyrlhf(["data", "sft"], root / "one", root / "tmp", launch=False)
    one = json.loads((root / "one" / "results" / "sft_results.json").read_text())
    two = json.loads((root / "two" / "results" / "sft_results.json").read_text())
    assert one["manifest"]["distributed"]["world_size"] == 1
    # The same data and base model, then the same batches: rank r takes the per-device batches r, r+2, ... of one
    # seeded order, and the loss is averaged over all tokens of the global batch.
    assert two["base_pretraining"]["final_loss"] == pytest.approx(one["base_pretraining"]["final_loss"], rel=1e-4)
    curve_one, curve_two = ([h["loss"] for h in r["loss_curve"]] for r in (one, two))
    assert len(curve_one) == len(curve_two) == SMALL["sft.max_steps"]
    # Stated tolerance: 1e-4 relative per logged step (float sums in another order; measured well inside it).
    assert curve_two == pytest.approx(curve_one, rel=1e-4)
    assert two["after"]["loss"] == pytest.approx(one["after"]["loss"], rel=1e-4)


def test_a_batch_that_does_not_split_over_the_processes_is_refused_up_front(monkeypatch, capsys):
    from tinyrlhf import cli, config, distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["run", "sft", "--profile", "cpu", "--set", "sft.batch_size=7"]) == 1
    assert "sft.batch_size (7) must be a multiple of the number of processes (2)" in capsys.readouterr().err
    assert distributed.micro_batch(8, 8) == 4  # capped at this process's share of the mini-batch
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(distributed.DistributedError, match=r"ppo.mini_batch / processes \(12 / 4 = 3\) must be a "):
        distributed.check_batches(config.get_profile("cpu", sft__batch_size=8, rm__batch_size=8, ppo__ppo_batch=24,
                                                     ppo__mini_batch=12, ppo__micro_batch=2))
    distributed.check_batches(config.get_profile("cpu", sft__batch_size=7), ["rm", "ppo"])  # SFT not run: not checked


@pytest.mark.parametrize("engine, stages, message", [
    ("ACCELERATE_USE_DEEPSPEED", ["sft", "ppo"], "the ppo stage cannot run under deepspeed"),
    ("ACCELERATE_USE_FSDP", ["ppo"], "the ppo stage cannot run under fsdp"),
    ("ACCELERATE_USE_FSDP", ["rm"], "reward models at int8, int4 cannot train under FSDP")])
def test_what_an_engine_cannot_do_is_refused_before_anything_loads(monkeypatch, engine, stages, message):
    from tinyrlhf import config, distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(engine, "true")
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.check_launch(stages, config.get_profile("cpu"))
    distributed.check_launch(["sft"], config.get_profile("cpu"))  # SFT is left to the trainer
