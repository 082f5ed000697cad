"""The time budget: predicted hours per stage of a profile from its work, the card's speed and the CPU's
reward-scoring rate (tinyrlhf.budget, docs/time-budget.md, 00_Setup)."""

from __future__ import annotations

import json

import pytest

from tinyrlhf import budget, config, display

RTX = config.get_profile("rtx4060")


def _machine(tflops=30.0, bandwidth=272.0, cpu=700.0) -> budget.Machine:
    return budget.Machine("card", tflops, bandwidth, 7, cpu, "test")


# Every scoring on the CPU, after the rollout: the cases where the CPU's rate shows in every stage
SERIAL = config.get_profile("rtx4060", overrides={"eval.score_device": "cpu", "ppo.overlap_scoring": "off"})


def test_each_stage_is_as_slow_as_its_work_over_the_speed_that_bounds_it():
    rows = {r["stage"].split(" (")[0]: r for r in budget.predict(SERIAL, _machine())}
    assert set(rows) == {"SFT", "reward models", "best-of-n", "PPO", "evaluation"}
    # SFT: steps x batch x accumulation x (prompt + reply) tokens, 6N FLOPs each with checkpointing, at MFU x peak;
    # its evaluation: the held-out loss (2N per token) and greedy replies, before and after, and sampled replies
    # in chunks of 64, each decode step bound by the step overhead (a 0.5B model's weights read in 3.6 ms)
    n, s, e = budget.spec_for_profile(SERIAL).n_params, SERIAL.sft, SERIAL.eval
    tokens = s.max_steps * 2 * 8 * (384 + 128)
    evaluation = (2 * 2 * n * s.eval_pairs * 512 / (30e12 * budget.MFU)
                  + (2 * s.sample_prompts * 128 + -(-e.prompts * e.samples // 64) * SERIAL.ppo.max_new)
                  * budget.DECODE_STEP_OVERHEAD_S)
    assert rows["SFT"]["gpu_hours"] == pytest.approx((6 * n * tokens / (30e12 * budget.MFU) + evaluation) / 3600)
    assert rows["SFT"]["cpu_hours"] == 0
    faster_card = {r["stage"]: r for r in budget.predict(SERIAL, _machine(tflops=60.0))}
    faster_cpu = {r["stage"]: r for r in budget.predict(SERIAL, _machine(cpu=1400.0))}
    for r in budget.predict(SERIAL, _machine()):
        assert faster_cpu[r["stage"]]["cpu_hours"] == pytest.approx(r["cpu_hours"] / 2)
        assert faster_cpu[r["stage"]]["gpu_hours"] == pytest.approx(r["gpu_hours"])
        assert faster_card[r["stage"]]["gpu_hours"] <= r["gpu_hours"]
    assert rows["PPO"]["hours"] == max(r["hours"] for r in rows.values())  # the PPO runs' updates dominate
    # best-of-n: every candidate scored once by every reward model of every best-of-n arm, and by the judge (a public
    # reward model, 2.7 reward-model passes a token: judge_passes), on the CPU
    pool = SERIAL.eval.prompts * SERIAL.eval.bon_pool
    assert SERIAL.eval.judge == "Skywork/Skywork-Reward-V2-Llama-3.2-1B"
    judge = budget.judge_passes(SERIAL)
    scored = (len(SERIAL.bon_arms + SERIAL.bits_arms) * len(SERIAL.rm.seeds) + judge) * pool * (384 + 128)
    assert rows["best-of-n"]["cpu_hours"] == pytest.approx(scored / 700.0 / 3600)


def test_scoring_beside_no_training_moves_to_the_idle_card():
    """eval.score_device 'auto': the test pairs, the pool and the cross matrix are scored on the card (a forward
    pass over the backbone at the card's rate), no CPU hours left there; the judge of PPO's evaluation stays on
    the CPU."""
    idle = {r["key"]: r for r in budget.predict(RTX, _machine())}
    cpu = {r["key"]: r for r in budget.predict(config.get_profile("rtx4060", overrides={"eval.score_device": "cpu"}),
                                               _machine())}
    spec = budget.spec_for_profile(RTX)
    backbone = spec.n_params - spec.vocab * spec.hidden
    judge = budget.judge_passes(RTX)  # a judge that is a model scores the pool where the scorers do
    tokens = (len(RTX.bon_arms + RTX.bits_arms) * len(RTX.rm.seeds) + judge) * RTX.eval.prompts * RTX.eval.bon_pool \
        * (384 + 128)
    assert idle["bon"]["cpu_hours"] == 0 and idle["rm"]["cpu_hours"] == 0
    assert idle["bon"]["gpu_hours"] - cpu["bon"]["gpu_hours"] == pytest.approx(
        2 * backbone * tokens / (30e12 * budget.MFU) / 3600)
    assert 0 < idle["eval"]["cpu_hours"] < cpu["eval"]["cpu_hours"]
    assert idle["ppo"]["hours"] == cpu["ppo"]["hours"]


def test_a_judge_costs_what_its_size_costs_where_it_scores():
    """Scoring cost grows with the parameters a forward pass multiplies: the rtx4060 judge (Skywork-Reward-V2-Llama-
    3.2-1B: 1.24 B parameters, 0.97 B of them past the embedding lookup) costs 2.7 reward-model passes a token, on
    best-of-n's pool (the idle card) and in 04's evaluations (the CPU); the heldout judge one, and one more reward
    model to train; a public judge of unknown size is assumed a reward model's; the gold rule costs nothing."""
    spec = budget.spec_for_profile(RTX)
    skywork = budget.JUDGE_PARAMS["Skywork/Skywork-Reward-V2-Llama-3.2-1B"]
    passes = budget.judge_passes(RTX)
    backbone = spec.n_params - spec.vocab * spec.hidden  # a reward model's: no vocabulary projection
    assert passes == pytest.approx((skywork["params"] - skywork["embedding"]) / backbone)
    assert 2.6 < passes < 2.8 and budget.judge_passes(config.get_profile("cpu")) == 0.0  # the cpu profile: gold
    other = {j: config.get_profile("rtx4060", overrides={"eval.judge": j}) for j in ("heldout", "some-org/some-rm")}
    assert budget.judge_passes(other["heldout"]) == budget.judge_passes(other["some-org/some-rm"]) == 1.0
    rows = {name: {r["key"]: r for r in budget.predict(p, _machine())}
            for name, p in (("skywork", RTX), ("heldout", other["heldout"]), ("unknown", other["some-org/some-rm"]))}
    e = RTX.eval
    pool_tokens = e.prompts * e.bon_pool * (384 + 128)
    assert rows["skywork"]["bon"]["gpu_hours"] - rows["unknown"]["bon"]["gpu_hours"] == pytest.approx(
        (passes - 1) * 2 * backbone * pool_tokens / (30e12 * budget.MFU) / 3600)
    replies = budget.work_counts(RTX)["ppo_runs"] * budget.work_counts(RTX)["replies_per_run"] + e.prompts * e.samples
    assert rows["skywork"]["eval"]["cpu_hours"] - rows["unknown"]["eval"]["cpu_hours"] == pytest.approx(
        (passes - 1) * replies * (384 + 128) / 700.0 / 3600)
    assert rows["heldout"]["bon"]["hours"] == pytest.approx(rows["unknown"]["bon"]["hours"])
    assert rows["heldout"]["rm"]["gpu_hours"] > rows["unknown"]["rm"]["gpu_hours"] == rows["skywork"]["rm"]["gpu_hours"]
    assert "Skywork-Reward-V2-Llama-3.2-1B, 2.7x a reward model's forward pass" in rows["skywork"]["bon"]["work"]
    assert "heldout judge" in rows["heldout"]["bon"]["work"]


def test_overlapped_scoring_hides_behind_the_cards_rollout_work():
    """ppo.overlap_scoring: a chunk's scoring runs while the card generates the next ones and runs the reference
    and value passes; only what is longer than that work is left on the clock."""
    for cpu_rate, hidden_fully in ((5000.0, True), (20.0, False)):
        on = {r["key"]: r for r in budget.predict(RTX, _machine(cpu=cpu_rate))}["ppo"]
        off = {r["key"]: r for r in budget.predict(SERIAL, _machine(cpu=cpu_rate))}["ppo"]
        assert on["gpu_hours"] == pytest.approx(off["gpu_hours"])
        assert (on["cpu_hours"] == 0) is hidden_fully and on["cpu_hours"] < off["cpu_hours"]


def test_expected_lengths_count_the_tokens_the_stages_process_and_the_card_still_pads():
    """Issue 25: the work at the data's mean lengths beside the upper bound. The packed scoring of generated
    replies counts real tokens; generation and PPO's passes on the card stay at the limits (longest reply of a
    chunk, TRL's padding to the longest of 64 prompts); padded batches (SFT and reward-model training, test-pair
    scoring) cost their longest sequence, from HH-RLHF's measured lengths, and the limits without them."""
    lengths = budget.Lengths(prompt=100, chosen=40, rejected=50, reply=40, source="test")
    got = {r["key"]: r for r in budget.predict(SERIAL, _machine(), lengths=lengths)}
    most = {r["key"]: r for r in budget.predict(SERIAL, _machine())}
    for key in ("sft", "rm"):
        assert got[key]["hours"] == pytest.approx(most[key]["hours"])
    for key in ("bon", "ppo", "eval"):
        assert got[key]["cpu_hours"] == pytest.approx(most[key]["cpu_hours"] * 140 / 512)
        assert got[key]["gpu_hours"] == pytest.approx(most[key]["gpu_hours"])
    hh = budget.expected(SERIAL)
    assert hh.padded(2 * SERIAL.rm.batch_size, 512) == budget.HH_RLHF_HARMLESS_LONGEST[8]
    assert hh.padded(3, 512) == budget.HH_RLHF_HARMLESS_LONGEST[4] and hh.padded(1000, 300) == 300  # rounds up
    real = {r["key"]: r for r in budget.predict(SERIAL, _machine(), lengths=hh)}
    n, s = budget.spec_for_profile(SERIAL).n_params, SERIAL.sft  # padded training and held-out loss, shorter
    shorter = (6 * s.max_steps * 2 * 8 * (512 - hh.padded(2, 512)) + 2 * 2 * s.eval_pairs * (512 - hh.padded(16, 512)))
    assert most["sft"]["gpu_hours"] - real["sft"]["gpu_hours"] == pytest.approx(
        n * shorter / (30e12 * budget.MFU) / 3600)
    assert real["rm"]["gpu_hours"] < most["rm"]["gpu_hours"]
    # from a data stage's statistics, each mean capped at its limit; a generated reply as long as a chosen one
    stats = {"source": "local", "tokenizer": "t", "token_lengths": {
        "prompt": {"mean": 500.0}, "chosen": {"mean": 30.0}, "rejected": {"mean": 200.0}}}
    seen = budget.lengths_from_stats(RTX, stats)
    assert (seen.prompt, seen.chosen, seen.rejected, seen.reply) == (384, 30.0, 128, 30.0)
    assert seen.longest is None  # batches padded at the limits: no measured distribution for this data
    assert budget.expected(RTX).prompt == budget.HH_RLHF_HARMLESS["prompt"]


def test_the_card_design_is_size_designs_choice_and_fits_an_evening_and_a_day():
    """Issue 25: the rtx4060 profile's reward-model seeds and evaluation prompts are what budget.size_design picks
    from the recorded variance components, and the prediction (published RTX 4060 figures, 8-core reference CPU,
    expected lengths) has the best-of-n tax of every arm, the bits sweep's included, by 3.1 h (3.0 h before the sweep)
    and the whole study by 24 h."""
    rec = budget.recorded_components()
    design = budget.size_design(RTX, budget.desktop(8), rec["components"][budget.WIDEST_ARM], rec["ref_gain"],
                                lengths=budget.expected(RTX))
    chosen = design["chosen"]
    assert (len(RTX.rm.seeds), RTX.eval.prompts) == (chosen["seeds"], chosen["prompts"])
    when = budget.milestones(RTX, budget.predict(RTX, budget.desktop(8), lengths=budget.expected(RTX)))
    assert when["bon_tax_hours"] <= 3.1 and when["study_hours"] <= 24.0
    study = config.get_profile("rtx4060_study")  # one setting away, and a job of days
    assert budget.total_hours(budget.predict(study, budget.desktop(8), lengths=budget.expected(study))) > 48


def test_size_design_buys_seeds_or_prompts_where_the_variance_is():
    """Seed-to-seed variance is bought down with seeds, per-prompt noise with prompts; the pick is the narrowest
    interval among the designs that fit, and nothing is picked when nothing fits."""
    machine = _machine(tflops=1000.0, cpu=1e6)  # a fast card: everything fits; only the variance decides
    options = {"seeds_options": (2, 3, 4), "prompts_options": (64, 512)}
    seedy = {"seed": 0.01, "prompt": 0.0, "residual": 0.0, "seeds": 5, "prompts": 64}
    noisy = {"seed": 0.0, "prompt": 0.0, "residual": 1.0, "seeds": 5, "prompts": 64}
    for comp in (seedy, noisy):
        got = budget.size_design(RTX, machine, comp, 1.0, **options)
        assert got["chosen"] == min(got["candidates"], key=lambda c: (round(c["half_width"], 4), c["study_hours"]))
    slow = budget.size_design(RTX, machine, seedy, 1.0, bon_hours=5.0, study_hours=1e9,
                              **options | {"prompts_options": (64,)})
    fits = [c["seeds"] for c in slow["candidates"] if c["fits"]]
    assert slow["chosen"]["seeds"] == max(fits)  # seed variance: as many seeds as the hours allow
    none = budget.size_design(RTX, _machine(), seedy, 1.0, bon_hours=0.01, **options)
    assert none["chosen"] is None and not any(c["fits"] for c in none["candidates"])


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


def test_the_counts_follow_the_seeds_each_arm_trains_and_runs_on():
    """Controls on the first rm.control_seeds, PPO on the first ppo.rm_seeds: the jobs the stages build and the
    budget's counts agree (the default cpu profile: 7 precision seeds, 3 control seeds, PPO on 5)."""
    from tinyrlhf import stages

    for profile in (config.get_profile("cpu"),
                    config.get_profile("cpu", overrides={"rm.control_seeds": 0, "ppo.rm_seeds": 0})):
        work, models = budget.work_counts(profile), stages.rm_models(profile)
        assert work["reward_models"] == len(models)
        assert work["pool_scorers"] == len(stages.bon_scorers(profile))
        assert work["ppo_runs"] == len(stages.ppo_runs(profile))
        for arm in profile.arms:
            assert sorted(s["seed"] for s in models.values() if s["arm"] == arm) == sorted(profile.arm_seeds(arm))
    cpu = config.get_profile("cpu")
    assert (len(cpu.rm.seeds), cpu.rm.control_seeds, cpu.ppo.rm_seeds) == (7, 3, 5)
    assert budget.work_counts(cpu)["reward_models"] == 3 * 7 + 2 * 3 + 1  # + the same-recipe judge
    assert budget.work_counts(cpu)["ppo_runs"] == 3 * 5 + 2 * 3
    assert {(arm, seed) for arm, seed, _ in stages.ppo_runs(cpu) if arm == "null"} == {("null", s) for s in (0, 1, 2)}
