"""The budget's card speeds measured instead of assumed (issue 25, item 5): a few real steps of each kind turned
into the share of the card's peak and the decode step the prediction uses. No GPU here: the card's timings are
injected; the measurement itself runs on the CPU at the cpu profile's size."""

from __future__ import annotations

import pytest

from tinyrlhf import budget, calibrate, config

RTX = config.get_profile("rtx4060")


def _machine(tflops=30.0) -> budget.Machine:
    return budget.Machine("card", tflops, 272.0, 7, 700.0, "test")


def _timings_at(profile, machine, share: float, decode_step_s: float) -> dict:
    """The seconds a card reaching `share` of its peak would measure for each step calibrate.measure times (every
    stage trains with gradient checkpointing on rtx4060: 6 FLOPs per parameter per token)."""
    spec = budget.spec_for_profile(profile)
    n, backbone = spec.n_params, spec.n_params - spec.vocab * spec.hidden
    peak, tokens = machine.bf16_tflops * 1e12 * share, calibrate.sequence_tokens(profile)
    rows = calibrate.batch_sequences(profile)
    return {"sft": 6 * n * rows["sft"] * tokens / peak, "rm": 6 * backbone * rows["rm"] * tokens / peak,
            "ppo": 6 * n * rows["ppo"] * tokens / peak, "decode_step": decode_step_s,
            "score_tokens_per_s": peak / (2 * backbone)}


def test_measured_speeds_replace_the_assumed_ones():
    machine = _machine()
    cal = calibrate.calibration_from(RTX, machine, _timings_at(RTX, machine, 0.2, 0.03), source="injected")
    assert cal.mfu == pytest.approx({"sft": 0.2, "rm": 0.2, "ppo": 0.2, "score": 0.2})
    got = budget.predict(RTX, machine, calibration=cal)
    want = budget.predict(RTX, machine, mfu=0.2, decode_step_s=0.03)
    for a, b in zip(got, want, strict=True):
        assert a["hours"] == pytest.approx(b["hours"]) and a["gpu_hours"] == pytest.approx(b["gpu_hours"])
    slower = calibrate.calibration_from(RTX, machine, _timings_at(RTX, machine, 0.1, 0.03), source="injected")
    assert budget.total_hours(budget.predict(RTX, machine, calibration=slower)) > budget.total_hours(got)


def test_setup_measures_the_card_when_there_is_one(monkeypatch):
    """00_Setup's and `tinyrlhf env`'s prediction: with a card, its measured figures and a minute of real steps
    (injected here); without one, the published RTX 4060 figures and the assumptions, said in words."""
    report = {"cpu": {"physical_cores": 8, "logical_cores": 16}, "cuda": {"devices": []}}
    monkeypatch.setattr(budget, "cpu_gemm_gflops", lambda threads: 93.0)
    plain = calibrate.prediction_here(RTX, report)
    assert plain["calibration"] is None and "assumed" in " ".join(calibrate.describe(plain))
    card = {"name": "card (measured)", "bf16_tflops": 30.0, "bandwidth_gbs": 272.0}
    asked = []

    def measure(profile, device):
        asked.append(device)
        return _timings_at(profile, _machine(), 0.1, 0.03)

    here = calibrate.prediction_here(RTX, report | {"cuda": {"devices": [{"name": "card"}]}}, measure_card=measure,
                                     gpu_figures=lambda: card)
    assert asked == ["cuda"] and here["calibration"].mfu["sft"] == pytest.approx(0.1)
    assert "measured on card (measured)" in " ".join(calibrate.describe(here))
    assert here["milestones"]["study_hours"] > plain["milestones"]["study_hours"]  # 0.1 of the peak, not 0.35


@pytest.mark.slow
def test_every_kind_of_step_is_timed_on_this_cpu():
    """calibrate.measure at the cpu profile's size on one thread: every step timed, and what it implies is a share
    of this CPU's float32 matrix-multiply speed (a share, not a multiple)."""
    profile = config.get_profile("cpu")
    timings = calibrate.measure(profile, "cpu", threads=1, repeats=1)
    assert set(timings) == {"base", "sft", "rm", "ppo", "decode_step", "score_tokens_per_s"}  # base: pre-training
    assert all(v > 0 for v in timings.values())
    cpu = budget.Machine("this CPU", budget.cpu_gemm_gflops(1) / 1000, 10.0, 1, 1.0, "test")
    cal = calibrate.calibration_from(profile, cpu, timings, source="this CPU")
    assert all(0 < share < 1.5 for share in cal.mfu.values()), cal.mfu


def test_the_validation_of_this_kind_of_cpu_gives_the_fixed_seconds(tmp_path, monkeypatch):
    """04's CPU prediction takes fixed seconds per job from the budget validation run on this kind of CPU where
    there is one (they differ by kind), else from the first one."""
    first = tmp_path / "budget-validation.json"
    first.write_text('{"calibration": {"job_overhead_s": {"rm": 1.0}}}')
    monkeypatch.setattr(calibrate, "VALIDATION_FILE", first)
    monkeypatch.setattr(calibrate, "cpu_kind", lambda flags: "avx2")
    assert calibrate.read_validation()["calibration"]["job_overhead_s"] == {"rm": 1.0}
    (tmp_path / "budget-validation-avx2.json").write_text('{"calibration": {"job_overhead_s": {"rm": 2.0}}}')
    assert calibrate.read_validation()["calibration"]["job_overhead_s"] == {"rm": 2.0}
    first.unlink()
    monkeypatch.setattr(calibrate, "cpu_kind", lambda flags: "avx512")
    assert calibrate.read_validation() == {}
