"""The time budget: predicted hours per stage of a profile from its work, the card's speed and the CPU's
reward-scoring rate (tinyrlhf.budget, docs/time-budget.md, 00_Setup)."""

from __future__ import annotations

import json

import pytest

from tinyrlhf import budget, config, display

RTX = config.get_profile("rtx4060")


def _machine(tflops=30.0, bandwidth=272.0, cpu=700.0) -> budget.Machine:
    return budget.Machine("card", tflops, bandwidth, 7, cpu, "test")


def test_each_stage_is_as_slow_as_its_work_over_the_speed_that_bounds_it():
    rows = {r["stage"].split(" (")[0]: r for r in budget.predict(RTX, _machine())}
    assert set(rows) == {"SFT", "reward models", "best-of-n", "PPO", "evaluation"}
    # SFT: steps x batch x accumulation x (prompt + reply) tokens, 6N FLOPs each with checkpointing, at MFU x peak
    n = budget.spec_for_profile(RTX).n_params
    tokens = 1000 * 2 * 8 * (384 + 128)
    assert rows["SFT"]["gpu_hours"] == pytest.approx(6 * n * tokens / (30e12 * budget.MFU) / 3600)
    assert rows["SFT"]["cpu_hours"] == 0
    faster_card = {r["stage"]: r for r in budget.predict(RTX, _machine(tflops=60.0))}
    faster_cpu = {r["stage"]: r for r in budget.predict(RTX, _machine(cpu=1400.0))}
    for r in budget.predict(RTX, _machine()):
        assert faster_cpu[r["stage"]]["cpu_hours"] == pytest.approx(r["cpu_hours"] / 2)
        assert faster_cpu[r["stage"]]["gpu_hours"] == pytest.approx(r["gpu_hours"])
        assert faster_card[r["stage"]]["gpu_hours"] <= r["gpu_hours"]
    assert rows["PPO"]["hours"] == max(r["hours"] for r in rows.values())  # the PPO runs' updates dominate
    # best-of-n: every candidate scored once by every reward model of every best-of-n arm, on the CPU
    pool = RTX.eval.prompts * RTX.eval.bon_pool
    scored = len(RTX.bon_arms) * len(RTX.rm.seeds) * pool * (384 + 128)
    assert rows["best-of-n"]["cpu_hours"] == pytest.approx(scored / 700.0 / 3600)


def test_expected_lengths_count_the_tokens_the_stages_process_and_the_card_still_pads():
    """Issue 25: the work at the data's mean lengths beside the upper bound. The packed CPU scoring of generated
    replies counts real tokens; padded work stays at the limits: generation and PPO's passes on the card (longest
    reply of a chunk, TRL's padding), SFT and reward-model training and 03's test-pair scoring (padded batches)."""
    lengths = budget.Lengths(prompt=100, chosen=40, rejected=50, reply=40, source="test")
    got = {r["key"]: r for r in budget.predict(RTX, _machine(), lengths=lengths)}
    most = {r["key"]: r for r in budget.predict(RTX, _machine())}
    for key in ("sft", "rm"):
        assert got[key]["hours"] == pytest.approx(most[key]["hours"])
    for key in ("bon", "ppo", "eval"):
        assert got[key]["cpu_hours"] == pytest.approx(most[key]["cpu_hours"] * 140 / 512)
        assert got[key]["gpu_hours"] == pytest.approx(most[key]["gpu_hours"])
    # from a data stage's statistics, each mean capped at its limit; a generated reply as long as a chosen one
    stats = {"source": "local", "tokenizer": "t", "token_lengths": {
        "prompt": {"mean": 500.0}, "chosen": {"mean": 30.0}, "rejected": {"mean": 200.0}}}
    seen = budget.lengths_from_stats(RTX, stats)
    assert (seen.prompt, seen.chosen, seen.rejected, seen.reply) == (384, 30.0, 128, 30.0)
    assert budget.expected(RTX).prompt == budget.HH_RLHF_HARMLESS["prompt"]


def test_the_best_of_n_answer_comes_first_and_each_ppo_run_adds_to_it():
    rows = budget.predict(RTX, _machine(), lengths=budget.expected(RTX))
    when = budget.milestones(RTX, rows)
    hours = {r["key"]: r["hours"] for r in rows}
    assert [r["key"] for r in rows] == ["sft", "rm", "bon", "ppo", "eval"]  # the order the notebooks run them
    assert when["bon_tax_hours"] == pytest.approx(hours["sft"] + hours["rm"] + hours["bon"])
    assert when["ppo_runs"] == len(RTX.arms) * len(RTX.rm.seeds)
    assert when["bon_tax_hours"] + when["ppo_runs"] * when["ppo_run_hours"] == pytest.approx(when["study_hours"])
    words = display.milestone_words(when, budget.milestones(RTX, budget.predict(RTX, _machine())))
    assert f"{when['bon_tax_hours']:.1f} h" in words and "at the limits" in words


def test_the_table_totals_the_stages():
    rows = budget.predict(RTX, _machine())
    table = display.budget_table(rows)
    assert table.iloc[-1]["stage"] == "total"
    assert float(table.iloc[-1]["hours"]) == pytest.approx(budget.total_hours(rows), abs=0.06)
    both = display.budget_table(budget.predict(RTX, _machine(), lengths=budget.expected(RTX)), rows)
    assert float(both.iloc[-1]["hours at the limits"]) == pytest.approx(budget.total_hours(rows), abs=0.06)
    assert float(both.iloc[-1]["hours"]) < float(both.iloc[-1]["hours at the limits"])


def test_this_machine_carries_the_reference_rate_over_by_matrix_multiply_speed(tmp_path, monkeypatch):
    runs = {"threads=1": {"size": "real", "threads": 1, "tokens_per_s": {"bf16": 100.0}, "gemm_gflops": 50.0,
                          "cpu": "ref cpu", "date": "2026-11-24"},
            "threads=2": {"size": "real", "threads": 2, "tokens_per_s": {"bf16": 190.0}, "gemm_gflops": 99.0,
                          "cpu": "ref cpu", "date": "2026-11-24"}}
    other = {"threads=1": runs["threads=1"] | {"tokens_per_s": {"bf16": 1.0}}}  # another CPU kind: not the reference
    ref = {"kinds": {"avx2": {"runs": runs}, "avx512-bf16": {"runs": other}}, "reference_kind": "avx2"}
    (tmp_path / "rm-scoring.json").write_text(json.dumps(ref))
    monkeypatch.setattr(budget, "REFERENCE_FILE", tmp_path / "rm-scoring.json")
    monkeypatch.setattr(budget, "cpu_gemm_gflops", lambda threads, **kw: 100.0)  # twice the reference per thread
    m = budget.this_machine(8)
    assert m.cpu_threads == 7 and m.cpu_tokens_per_s == pytest.approx(7 * 200.0 * 0.95)  # 1.9x on 2 threads
    assert "RTX 4060" in m.gpu and m.bf16_tflops == budget.RTX4060["bf16_tflops"]
    assert budget.reference()["scaling"] == pytest.approx(1.9)
    assert budget.desktop(8).cpu_tokens_per_s == pytest.approx(700.0 * 0.95)
    assert budget.desktop(2).cpu_tokens_per_s == pytest.approx(100.0)  # one thread: the measured rate
    monkeypatch.setattr(budget, "REFERENCE_FILE", tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="benchmarks/rm_scoring.py --size real"):
        budget.this_machine(8)


def test_the_shipped_reference_was_measured_at_the_real_size():
    ref = budget.reference()
    assert ref["bf16_tokens_per_s_per_thread"] > 0 and ref["gemm_gflops_per_thread"] > 0
    assert budget.cpu_gemm_gflops(1, size=256, repeats=2) > 0
