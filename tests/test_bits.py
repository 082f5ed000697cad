"""Best-of-n's bits sweep: bf16-trained reward models served at 8, 4, 3 and 2-bit weights (torchao), the tax
against bits with its trend test and onset, the headline n fixed before the run, bands simultaneous over n and over
the headline's claims, and trained minus served."""

import json
import math

import numpy as np
import pytest
import torch

from tinyrlhf import bon
from tinyrlhf.config import ConfigError, get_profile
from tinyrlhf.stats import t_quantile, widened

PROMPTS = ["\n\nHuman: how do I fix a flat tyre?\n\nAssistant:"] * 3 + ["\n\nHuman: hello\n\nAssistant:"] * 2
REPLIES = [" Take the wheel off and patch the tube.", " no", " Go away.", " Hello! How can I help?", " hi"]


def _library_model(path, bits: int, group: int, tokenizer):
    """The same reward model quantized by transformers' own torchao integration (TorchAoConfig at load) with PEFT's
    own torchao LoRA layer on top: another code path to the library's forward than reward.serve_at_bits."""
    from peft import PeftModel
    from torchao.quantization import IntxWeightOnlyConfig, MappingType
    from torchao.quantization.granularity import PerGroup
    from transformers import AutoModelForSequenceClassification, TorchAoConfig

    info = json.loads((path / "precision.json").read_text())
    init = str((path / info["init_path"]).resolve()) if info.get("init_is_local") else info["init_path"]
    config = TorchAoConfig(quant_type=IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"),
                                                           granularity=PerGroup(group),
                                                           mapping_type=MappingType.ASYMMETRIC),
                           modules_to_not_convert=["score"])
    backbone = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1, dtype=torch.float32,
                                                                  quantization_config=config, device_map={"": "cpu"})
    backbone.config.pad_token_id = tokenizer.pad_token_id
    return PeftModel.from_pretrained(backbone, str(path)).eval()


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_a_served_k_bit_model_scores_as_the_quantization_librarys_own_forward(tiny_world, bits):
    from tinyrlhf.reward import load_for_scoring, score_texts

    _, paths = tiny_world
    path = paths.rm("bf16", 0)
    model, info = load_for_scoring(path, device="cpu", serve_precision=f"w{bits}", cpu_dtype="fp32", serve_group=64)
    ours = score_texts(model, info["tokenizer"], PROMPTS, REPLIES)
    theirs = score_texts(_library_model(path, bits, 64, info["tokenizer"]), info["tokenizer"], PROMPTS, REPLIES)
    assert np.allclose(ours, theirs, rtol=0, atol=1e-6)
    assert info["kernel"]["kernel"] == "torchao" and f"int{bits} weights" in info["arithmetic"]
    assert "float32 on cpu" in info["arithmetic"]
    # the backbone's layers changed, nothing else: LoRA's adapters and the score head are bf16's own
    quantized = {n for n, p in model.named_parameters() if type(p) is not torch.nn.Parameter}
    assert quantized and all("base_layer" in n for n in quantized)
    assert not any("lora_" in n or "score" in n for n in quantized)


def test_k_bit_weights_hold_at_most_2_to_the_k_levels_per_group_and_lose_more_as_k_falls(tiny_world):
    from tinyrlhf.reward import load_for_scoring

    _, paths = tiny_world
    dense, _ = load_for_scoring(paths.rm("bf16", 0), device="cpu", cpu_dtype="fp32")
    name = next(n for n, _ in dense.named_parameters() if n.endswith("q_proj.base_layer.weight"))
    w = dict(dense.named_parameters())[name].detach()
    errors = {}
    for bits in (8, 4, 3, 2):
        model, _ = load_for_scoring(paths.rm("bf16", 0), device="cpu", serve_precision=f"w{bits}", cpu_dtype="fp32",
                                    serve_group=32)
        q = dict(model.named_parameters())[name].dequantize()
        groups = q.reshape(q.shape[0], -1, 32)
        levels = max(len(torch.unique(groups[r, g])) for r in range(groups.shape[0]) for g in range(groups.shape[1]))
        assert 1 < levels <= 2 ** bits
        errors[bits] = float((q - w).abs().mean() / w.abs().mean())
    assert errors[8] < errors[4] < errors[3] < errors[2] and errors[8] < 0.01 < errors[2]


def test_a_k_bit_model_for_the_idle_card_moves_there_with_its_k_bit_weights(tiny_world, monkeypatch):
    """The card's path (load_for_scoring moves the model to the device) keeps the torchao weights, in the card's
    compute dtype: "meta" stands in for the card."""
    from tinyrlhf.reward import load_for_scoring

    _, paths = tiny_world
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    model, info = load_for_scoring(paths.rm("bf16", 0), device="meta", serve_precision="w3", cpu_dtype="fp32")
    weights = [p for n, p in model.named_parameters() if n.endswith("base_layer.weight")]
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {type(p).__name__ for p in weights} == {"IntxUnpackedToInt8Tensor"} and weights[0].dtype == torch.bfloat16
    assert "bfloat16 on meta" in info["arithmetic"]


def test_a_group_that_does_not_divide_a_layer_is_refused_in_words(tiny_world):
    from tinyrlhf.reward import RewardModelError, load_for_scoring

    _, paths = tiny_world
    with pytest.raises(RewardModelError, match="eval.serve_group=96 does not divide"):
        load_for_scoring(paths.rm("bf16", 0), device="cpu", serve_precision="w4", serve_group=96)


@pytest.mark.parametrize("override, message", [({"eval.serve_bits": [9]}, "distinct widths"),
                                               ({"eval.serve_bits": [4, 4]}, "distinct widths"),
                                               ({"eval.serve_group": 48}, "32, 64 or 128"),
                                               ({"eval.headline_n": 3}, "must be one of the n"),
                                               ({"eval.headline_n": -1}, "integer >= 0")])
def test_bad_bits_settings_are_refused_with_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        get_profile("cpu", overrides=override)


def test_the_sweep_arms_score_the_pool_and_can_be_turned_off():
    from tinyrlhf.stages import bon_scorers

    scorers = bon_scorers(get_profile("cpu"))
    served = {s["serve_precision"] for s in scorers.values() if s["arm"].startswith("served-w")}
    assert served == {"w8", "w4", "w3", "w2"}
    assert all(s["model"].startswith("bf16") for s in scorers.values() if s["arm"].startswith("served-w"))
    assert not any(s["arm"].startswith("served-w") for s in
                   bon_scorers(get_profile("cpu", overrides={"eval.serve_bits": []})).values())


# ------------------------------------------------------------------------------------------ the analysis
def _world(seeds=5, prompts=40, pool=16, seed=0):
    rng = np.random.default_rng(seed)
    gold = rng.normal(size=(prompts, pool))
    return rng, gold


def _proxy(rng, gold, noise, seeds=5):
    """Each seed's reward model: the gold score plus noise of this sd (more noise ranks worse: a larger tax)."""
    return np.stack([gold + rng.normal(scale=noise, size=gold.shape) for _ in range(seeds)])


def test_a_planted_cost_below_4_bits_is_found_where_it_begins_with_a_rising_trend():
    rng, gold = _world()
    bf16 = _proxy(rng, gold, 0.3)
    shared = rng.normal(scale=0.02, size=bf16.shape)
    proxies = {"bf16": bf16, "served-w8": bf16 + shared, "served-w4": bf16 + 2 * shared,
               "served-w3": _proxy(rng, gold, 1.5), "served-w2": _proxy(rng, gold, 4.0)}
    sweep = {"served-w8": 8, "served-w4": 4, "served-w3": 3, "served-w2": 2}
    out = bon.analyse(gold, proxies, reference="bf16", null=None, headline_n=4, sweep=sweep)
    assert set(out["arms"]) == {"bf16"}  # the sweep is reported apart
    rows = {r["bits"]: r for r in out["bits"]["rows"]}
    assert [r["bits"] for r in out["bits"]["rows"]] == [2, 3, 4, 8]
    assert rows[2]["tax_vs_bf16"] > rows[3]["tax_vs_bf16"] > 0.1 > abs(rows[8]["tax_vs_bf16"])
    assert out["bits"]["onset_bits"] == 3 and out["bits"]["stopped_at"] == 4  # 2 and 3 resolved; 4 is not
    from tinyrlhf import plots

    assert plots.onset_words(out["bits"]) == ("the tax is resolved from 0 at 2, 3 bits and not at 4 bits, where "
                                              "testing stopped (wider widths not tested)")
    trend = out["bits"]["trend"]
    assert trend["per_halving_ci95"][0] > 0 and all(s > 0 for s in trend["per_seed"])
    assert trend["sign_flip_p"] == pytest.approx(2 / 2 ** 5)


def test_no_cost_at_any_width_finds_no_onset_and_a_flat_trend():
    rng, gold = _world(seed=1)
    bf16 = _proxy(rng, gold, 0.5)
    proxies = {"bf16": bf16} | {f"served-w{k}": bf16.copy() for k in (8, 4, 3, 2)}
    out = bon.analyse(gold, proxies, reference="bf16", null=None, sweep={f"served-w{k}": k for k in (8, 4, 3, 2)})
    assert out["bits"]["onset_bits"] is None
    assert out["bits"]["trend"]["per_halving"] == pytest.approx(0, abs=1e-12)


def test_no_trend_or_trained_minus_served_where_bf16s_gain_is_not_resolved():
    rng, gold = _world(seed=7)
    noise = np.stack([rng.normal(size=gold.shape) for _ in range(5)])  # bf16 ranks at random: no gain to share
    out = bon.analyse(gold, {"bf16": noise, "int4": noise.copy(), "served-int4": noise.copy(), "served-w2": noise.copy()},
                      reference="bf16", null=None, headline_n=4, sweep={"served-w2": 2},
                      served_pairs={"int4": "served-int4"})
    assert out["arms"]["bf16"]["at_n_star"]["gold_gain_vs_sft_ci95"][0] <= 0
    assert out["bits"]["trend"] is None and out["trained_minus_served"] is None


def test_the_onset_stops_at_the_first_unresolved_width_from_the_fewest_bits_up():
    """Fixed-sequence testing: a width is tested only while every narrower one was resolved, so a cost at 4 bits
    after none at 2 is not an onset (that ordering is what keeps the family-wise error at 5% uncorrected)."""
    rng, gold = _world(seed=2)
    bf16 = _proxy(rng, gold, 0.3)
    proxies = {"bf16": bf16, "served-w4": _proxy(rng, gold, 3.0), "served-w2": bf16.copy()}
    out = bon.analyse(gold, proxies, reference="bf16", null=None, sweep={"served-w4": 4, "served-w2": 2})
    assert out["bits"]["rows"][1]["tax_vs_bf16_ci95"][0] > 0 and out["bits"]["onset_bits"] is None
    assert out["bits"]["stopped_at"] == 2
    from tinyrlhf import display, headline

    words = " ".join(display.bits_sentences(out | {"n_star": 4})) + headline.bits_verdict(out)
    # 4 bits' interval excludes 0, but it was never tested: nothing may say that no width's tax does
    assert "narrowest width (2 bits) is not resolved from 0: no onset" in words and "wider widths are not tested" in words
    assert "No width" not in words and "no width" not in words


def test_the_headline_n_is_the_one_fixed_before_the_run_else_the_peak_said_so():
    rng, gold = _world(seed=3)
    proxies = {"bf16": _proxy(rng, gold, 0.3), "int4": _proxy(rng, gold, 0.6)}
    fixed = bon.analyse(gold, proxies, reference="bf16", null=None, headline_n=2)
    peak = bon.analyse(gold, proxies, reference="bf16", null=None)
    assert fixed["n_star"] == 2 and fixed["arms"]["int4"]["at_n_star"]["n"] == 2 and "fixed" in fixed["n_star_rule"]
    assert peak["n_star"] == peak["n_peak"] == fixed["n_peak"]
    assert "chosen on the data it reports" in peak["n_star_rule"]
    none = bon.analyse(gold, {"bf16": np.full((5,) + gold.shape, np.nan)}, reference="bf16", null=None)
    assert none["n_star"] is None and "fixed" not in none["n_star_rule"]


def test_bands_over_every_n_and_over_the_headlines_claims_are_bonferroni_at_the_intervals_df():
    rng, gold = _world(seed=4)
    proxies = {"bf16": _proxy(rng, gold, 0.3), "int8": _proxy(rng, gold, 0.35), "int4": _proxy(rng, gold, 0.6),
               "served-int4": _proxy(rng, gold, 0.5)}
    out = bon.analyse(gold, proxies, reference="bf16", null=None, headline_n=4,
                      family=["int8", "int4", "served-int4"])
    e = out["arms"]["int4"]["at_n_star"]
    lo, hi = e["tax_vs_bf16_ci95"]
    parts, q = e["tax_variance"], 1 - 0.025 / 3
    # each variance part widened at its own df, as the interval itself was built (crossed_jackknife)
    half = math.sqrt(t_quantile(q, parts["seeds_df"]) ** 2 * parts["seeds"]
                     + t_quantile(q, parts["prompts_df"]) ** 2 * parts["prompts"])
    assert e["tax_vs_bf16_family_ci95"][1] - e["tax_vs_bf16"] == pytest.approx(half)
    assert half / (hi - e["tax_vs_bf16"]) > 1.2 and e["family"] == ["int8", "int4", "served-int4"]
    assert parts["seeds_df"] == 4 and parts["prompts_df"] == 39
    band = e["tax_vs_bf16_band"]  # over the 5 n's of a pool of 16
    assert band[0] < e["tax_vs_bf16_family_ci95"][0] < lo and "tax_vs_bf16_family_ci95" not in \
        out["arms"]["bf16"]["at_n_star"]
    # at many degrees of freedom the scale is the normal's: z(1 - 0.025 / 4) / z(0.975) = 2.498 / 1.960
    assert widened(0.0, [-1.0, 1.0], 1e6, 4)[1] == pytest.approx(2.498 / 1.960, abs=2e-3)


def test_trained_minus_served_is_the_difference_of_their_taxes_with_its_sign():
    rng, gold = _world(seed=5)
    bf16 = _proxy(rng, gold, 0.3)
    noise = np.stack([rng.normal(size=gold.shape) for _ in range(5)])  # ranks at random: no gain
    out = bon.analyse(gold, {"bf16": bf16, "int4": bf16.copy(), "served-int4": noise}, reference="bf16", null=None,
                      headline_n=4, served_pairs={"int4": "served-int4"})
    d = out["trained_minus_served"]["int4"]
    served, trained = (out["arms"][a]["at_n_star"]["tax_vs_bf16"] for a in ("served-int4", "int4"))
    assert d["value"] == pytest.approx(trained - served) and d["value"] < -0.5 and d["ci95"][1] < 0
    assert len(d["per_seed"]) == 5 and d["sign_flip_p"] == pytest.approx(2 / 32)


def test_the_ratio_leads_only_where_bf16s_gain_is_well_resolved():
    from tinyrlhf.stats import RATIO_MIN_MARGINS, arm_statistics

    rng = np.random.default_rng(6)
    base = np.zeros(30)
    strong = {"bf16": 1.0 + rng.normal(scale=0.3, size=(5, 30)), "int4": 0.9 + rng.normal(scale=0.3, size=(5, 30))}
    weak = {"bf16": 0.1 + rng.normal(scale=0.3, size=(5, 30)), "int4": 0.1 + rng.normal(scale=0.3, size=(5, 30))}
    s, w = (arm_statistics(c, base, reference="bf16", null=None)["int4"] for c in (strong, weak))
    assert s["ratio_leads"] and s["reference_gain_margins"] >= RATIO_MIN_MARGINS
    assert not w["ratio_leads"] and (w["reference_gain_margins"] or 0) < RATIO_MIN_MARGINS
    assert math.isfinite(s["reference_gain_z"]) and s["reference_gain_z"] > s["reference_gain_margins"]


def test_03_says_where_the_tax_begins_the_trend_and_what_trained_minus_served_cannot_separate():
    from test_schema import make_bon_results

    from tinyrlhf import display, plots

    bon = make_bon_results()
    words = " ".join(display.bits_sentences(bon))
    onset = bon["bits"]["onset_bits"]
    assert ("the tax is resolved from 0 at" in words) if onset else ("is not resolved from 0: no onset" in words)
    assert "per halving of the width" in words and "conditional on these prompts" in words
    assert "cannot separate" in words
    table = plots.bits_table(bon)
    assert list(table["served at"]) == [f"{k} bits (torchao)" for k in (2, 3, 4, 8)]
    by_n = display.tax_by_n_table(bon)
    assert len(by_n) == len(bon["ns"]) and by_n.iloc[2].str.contains("band").any()
    int4 = bon["arms"]["int4"]["at_n_star"]
    claims = " ".join(display.bon_sentences(bon))
    assert int4["tax_vs_bf16_ci95"][0] <= 0  # the builder's NF4 is not resolved: its bound is stated twice
    assert ("of best-of-n's precision arms, trained and served held at once (Bonferroni)" in claims
            and f"{int4['tax_vs_bf16_family_ci95'][1]:.1%}" in claims)
    assert display.bits_sentences({"bits": None}) == ["No bits sweep in this run (eval.serve_bits is empty)."]


def test_the_difference_leads_where_bf16s_gain_is_not_well_resolved():
    from tinyrlhf import display

    entry = {"tax_vs_bf16": 0.1, "tax_vs_bf16_ci95": [-0.2, 0.4], "tax_df": 4.0, "gain_diff_vs_bf16": -0.01,
             "gain_diff_vs_bf16_ci95": [-0.05, 0.03], "ratio_leads": False, "reference_gain_margins": 1.8,
             "tax_vs_bf16_family_ci95": [-0.35, 0.55], "family": ["int8", "int4"], "family_name": "PPO's precision arms"}
    words = display._tax_words("int4", entry, None)
    assert words.startswith("gain difference -0.010 [-0.050, +0.030]; as a share of bf16's gain (only 1.8 times its")
    assert "costs less than 40.0% of bf16's gain (95%), 55.0% with all 2 of PPO's precision arms held at once" in words
    assert display._tax_words("int4", entry | {"ratio_leads": True}, None).startswith("tax +10.0%")
