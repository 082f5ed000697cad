"""Figures and tables drawn from result JSON files (fake but realistic results, built in test_schema.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.image
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from tinyrlhf import plots
from tinyrlhf.results import atomic_write_json
from tinyrlhf.schema import SchemaError

sys.path.insert(0, str(Path(__file__).parent))  # the builders live beside this file, in test_schema.py
from test_schema import ARMS, SEEDS, make_bon_results, make_ppo_results, make_rm_results

ALL_FIGURES = {"rm_accuracy", "rm_costs", "ppo_gold_gain", "ppo_tax", "ppo_frontier", "ppo_training_curves",
               "ppo_time_memory", "ppo_cross_matrix", "rm_vs_ppo"}
BON_FIGURES = {"bon_frontier", "bon_proxy_vs_gold", "bon_tax", "bon_tax_vs_bits", "frontiers", "taxes"}
REASON = "CUDA out of memory at step 3"


def every_seed(arm: str, reason: str = REASON) -> dict:
    return {f"{arm}/seed{s}": reason for s in SEEDS}


def write_results(folder: Path, rm: dict | None, ppo: dict | None, bon: dict | None = None) -> Path:
    """Save results the way the stages do (atomic, strict JSON)."""
    if rm is not None:
        atomic_write_json(folder / "rm_results.json", rm)
    if bon is not None:
        atomic_write_json(folder / "bon_results.json", bon)
    if ppo is not None:
        atomic_write_json(folder / "ppo_experiment_results.json", ppo)
    return folder


def figure_text(fig) -> str:
    """All text of a figure (titles, annotations, legends, tick labels), whitespace collapsed."""
    return " ".join(" ".join(t.get_text() for t in fig.findobj(Text)).split())


def colors_by_precision(fig) -> dict[str, str]:
    """The colour of the main artist drawn for each precision (tagged with gid "precision=<p>")."""
    colors: dict[str, set] = {}
    for artist in fig.findobj(lambda a: (a.get_gid() or "").startswith("precision=")):
        if isinstance(artist, Rectangle):
            color = artist.get_facecolor()
        elif isinstance(artist, Line2D):
            color = artist.get_color()
        else:  # a scatter's PathCollection, or the LineCollection of an errorbar (coloured by its edges)
            faces = artist.get_facecolor()
            color = faces[0] if len(faces) else artist.get_edgecolor()[0]
        colors.setdefault(artist.get_gid().removeprefix("precision="), set()).add(to_hex(color))
    assert all(len(c) == 1 for c in colors.values()), colors  # one colour per precision within a figure
    return {p: c.pop() for p, c in colors.items()}


def test_draw_all_redraws_every_figure_from_json(tmp_path):
    results = write_results(tmp_path, make_rm_results(), make_ppo_results())
    written = plots.draw_all(results, tmp_path / "paper")
    assert set(written) == ALL_FIGURES
    for name, paths in written.items():
        assert [p.name for p in paths] == [f"{name}.png", f"{name}.pdf"]
        png, pdf = (p.read_bytes() for p in paths)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert pdf.startswith(b"%PDF")
        assert b"/FontFile2" in pdf, f"{name}.pdf has no embedded TrueType font"
        assert b"/FontFile3" not in pdf and b"/Subtype /Type3" not in pdf, f"{name}.pdf has Type 3 fonts"
    leftovers = [p.name for p in (tmp_path / "paper").iterdir() if not p.name.endswith((".png", ".pdf"))]
    assert leftovers == []  # no temp files left behind by the atomic writes


def test_draw_all_defaults_to_figures_folder_and_draws_what_exists(tmp_path):
    written = plots.draw_all(write_results(tmp_path, make_rm_results(), None))
    assert set(written) == {"rm_accuracy", "rm_costs"}
    assert all(p.parent == tmp_path / "figures" and p.exists() for paths in written.values() for p in paths)


def test_draw_all_without_results_names_both_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="rm_results.json.*ppo_experiment_results.json"):
        plots.draw_all(tmp_path)


def test_draw_all_validates_and_names_the_broken_file(tmp_path):
    ppo = make_ppo_results()
    ppo["arms"]["int8"]["kl_mean"] = "small"
    write_results(tmp_path, None, ppo)
    with pytest.raises(SchemaError, match=r"ppo_experiment_results\.json: \$\.arms\.int8\.kl_mean"):
        plots.draw_all(tmp_path)


def test_cli_writes_figures_and_reports_errors(tmp_path, capsys):
    write_results(tmp_path, make_rm_results(), None)
    assert plots.main([str(tmp_path), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "rm_accuracy.pdf").exists()
    assert "rm_accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        plots.main([str(tmp_path / "empty")])
    assert exit_info.value.code == 1
    assert "rm_results.json" in capsys.readouterr().err


def test_save_figure_sets_font_type_only_while_saving(tmp_path):
    before = matplotlib.rcParams["pdf.fonttype"], matplotlib.rcParams["ps.fonttype"]
    paths = plots.save_figure(plots.plot_rm_accuracy(make_rm_results()), tmp_path, "acc")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert (matplotlib.rcParams["pdf.fonttype"], matplotlib.rcParams["ps.fonttype"]) == before


def test_each_arm_has_one_colour_across_figures():
    rm, ppo = make_rm_results(), make_ppo_results()
    figures = [plots.plot_rm_accuracy(rm), plots.plot_training_curves(ppo), plots.plot_frontier(ppo),
               plots.plot_gold_gain(ppo), plots.plot_rm_vs_ppo(rm, ppo)]
    expected = {a: to_hex(plots.precision_color(a)) for a in ARMS}
    for fig in figures:
        colors = colors_by_precision(fig)
        assert {a: colors[a] for a in ARMS} == expected
    assert len(set(expected.values())) == len(ARMS)
    assert to_hex(plots.precision_color("sft")) not in expected.values()
    with pytest.raises(KeyError, match="bf16"):
        plots.precision_color("fp8")


def test_failed_arm_is_an_annotated_gap_not_a_crash(tmp_path):
    rm = make_rm_results(failed=every_seed("int4"))
    ppo = make_ppo_results(failed={"int4": REASON})
    bon = make_bon_results(failed=every_seed("int4"))
    figures = {name: draw(rm) for name, draw in plots.RM_FIGURES.items()}
    figures |= {name: draw(ppo) for name, draw in plots.PPO_FIGURES.items()}
    figures["rm_vs_ppo"] = plots.plot_rm_vs_ppo(rm, ppo)
    figures["bon_frontier"] = plots.plot_bon_frontier(bon)
    for name, fig in figures.items():
        text = figure_text(fig)
        if name == "ppo_cross_matrix":
            assert "—" in text  # the failed policy's cells are marked as missing
        elif name == "bon_frontier":
            assert "failed" in text and "no scores" in text, f"{name}: {text}"
        else:
            assert "failed" in text and REASON in text, f"{name}: {text}"
        assert "int4" not in colors_by_precision(fig), name  # nothing drawn for it
    # And the whole pipeline, from files, with bf16 (the baseline of the tax) failed as well.
    write_results(tmp_path, rm, make_ppo_results(failed={"bf16": "diverged", "int4": REASON}),
                  make_bon_results(failed=every_seed("bf16", "diverged")))
    assert set(plots.draw_all(tmp_path)) == ALL_FIGURES | BON_FIGURES


def test_summary_table_gives_gains_and_taxes_with_intervals_that_do_not_wrap():
    ppo = make_ppo_results()
    table = plots.summary_table(ppo)
    assert list(table["arm"]) == ["bf16", "int8", "int4", "null (bf16, other seed)", "noisy (bf16, flipped labels)"]
    bf16, int8 = ppo["arms"]["bf16"], ppo["arms"]["int8"]
    row = table.iloc[1]
    lo, hi = int8["gold_gain_vs_sft_ci95"]
    assert row["judge's gain vs SFT [95% CI]"] == f"{int8['gold_gain_vs_sft']:+.3f} [{lo:+.3f}, {hi:+.3f}]".replace(
        " ", "\u00a0")
    assert " " not in row["tax vs bf16 [95% CI]"] and row["tax vs bf16 [95% CI]"].count("%") == 3
    assert table.iloc[0]["apart from null?"] == "—" and row["apart from null?"] in ("yes", "no")
    assert row["status"] == "ok" and bf16["tax_vs_bf16"] == 0.0

    failed = plots.summary_table(make_ppo_results(failed={"bf16": "diverged"}))
    bf16_row, int8_row = failed.iloc[0], failed.iloc[1]
    assert bf16_row["judge's gain vs SFT [95% CI]"] == bf16_row["KL"] == "failed"
    assert bf16_row["status"] == ("failed: diverged (RM seed 0, PPO seed 0, RM seed 1, PPO seed 1, RM seed 2, "
                                  "PPO seed 2)")
    assert int8_row["tax vs bf16 [95% CI]"] == "—"  # no baseline, no tax


def test_rm_table_summarises_each_arm_over_its_seeds():
    rm = make_rm_results(failed=every_seed("int4") | {"int8/seed1": REASON})
    table = plots.rm_table(rm)
    bf16 = [m["accuracy"] for mid, m in rm["models"].items() if mid.startswith("bf16/")]
    assert table.iloc[0]["accuracy: mean [min, max]"] == \
        f"{sum(bf16) / 3:.2f} [{min(bf16):.2f}, {max(bf16):.2f}]".replace(" ", "\u00a0")
    assert set(table.columns) >= {"rude: mean (min)", "off-topic: mean (min)", "harmful: mean (min)",
                                  "above chance, every category"}
    assert table.iloc[0]["seeds"] == "3/3" and table.iloc[1]["seeds"] == "2/3"
    assert table.iloc[1]["status"] == "partial (2/3 seeds)"
    assert table.iloc[2]["accuracy: mean [min, max]"] == "failed" and REASON in table.iloc[2]["status"]
    assert table.iloc[0]["footprint (MiB)"] == "48.00"


def test_above_chance_needs_every_category_s_interval_above_one_half():
    from tinyrlhf.reward import above_chance, seed_summary

    rm = make_rm_results()
    models = [rm["models"][f"bf16/seed{s}"] for s in SEEDS]
    assert all(above_chance(m) for m in models) and seed_summary(models)["above_chance_share"] == 1.0
    models[0]["by_category"]["off_topic"]["accuracy_ci95"] = [0.45, 0.7]  # at chance on one category
    assert not above_chance(models[0]) and seed_summary(models)["above_chance_share"] == pytest.approx(2 / 3)


def test_tax_sentences_state_the_controls_and_what_an_interval_rules_out():
    from tinyrlhf import display

    ppo = make_ppo_results()
    lines = display.tax_sentences(ppo)
    assert lines[0].startswith("bf16: gain over SFT")
    assert any(line.startswith("null (bf16, other seed): tax") and "negative control" in line for line in lines)
    assert any(line.startswith("noisy (bf16, flipped labels): tax") and "positive control" in line for line in lines)
    bon = make_bon_results()
    text = " ".join(display.bon_sentences(bon))
    assert f"compared at n = {bon['n_star']} (fixed in the profile before the run" in text and "positive control" in text
    e = {"tax_vs_bf16": 0.01, "tax_vs_bf16_ci95": [-0.03, 0.05], "gain_diff_vs_bf16": -0.01,
         "gain_diff_vs_bf16_ci95": [-0.04, 0.02], "tax_minus_null_ci95": [-0.05, 0.04]}
    assert "costs less than 5.0% of bf16's gain (95%)" in display._tax_words("int4", e, "null")
    assert "within the null arm's noise" in display._tax_words("int4", e, "null")
    from tinyrlhf.stats import minimum_detectable

    mde = minimum_detectable(e["tax_vs_bf16_ci95"], 6.0)
    assert f"the smallest tax this design detects 4 times in 5: {mde:.1%}" in display._tax_words(
        "int4", e | {"tax_df": 6.0}, "null")
    assert 0.05 < mde < 0.06  # 3.4 standard errors of 0.016 (the half-width 0.04 over t = 2.45) at 6 df
    undefined = {"tax_vs_bf16": None, "tax_undefined": "bf16's gain interval does not exclude 0", "gain_diff_vs_bf16": -0.01}
    assert display._tax_words("int4", undefined, "null").startswith("tax undefined (bf16's gain interval does not exclude 0)")


def test_bon_tables_give_every_arm_at_n_star_and_every_n():
    bon = make_bon_results()
    table = plots.bon_table(bon)
    assert list(table["arm"])[-2:] == ["int8 served (bf16-trained)", "int4 served (bf16-trained)"]
    assert table.iloc[0]["tax vs bf16 [95% CI]"] == "+0.0%"
    by_n = plots.bon_by_n_table(bon)
    assert list(by_n["n"]) == bon["ns"] and "int4 tax" in by_n.columns and "bf16 tax" not in by_n.columns


def test_import_keeps_a_chosen_backend_and_stays_light():
    code = "import sys, matplotlib, tinyrlhf.plots; print(matplotlib.get_backend(), 'torch' in sys.modules)"
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "False"]


def test_saved_figures_are_shown_at_their_inline_size(tmp_path, monkeypatch):
    """draw_all's 150-dpi PNGs are shown at the width the same figure has inline (100 dpi), not one fixed width."""
    import IPython.display

    from tinyrlhf import display as show

    ppo = make_ppo_results()
    written = plots.draw_all(write_results(tmp_path, make_rm_results(), ppo, make_bon_results()), tmp_path / "figures")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    show.show_pngs(written)
    images = [o for o in shown if isinstance(o, IPython.display.Image)]
    assert len(images) == len(written)
    fig = plots.plot_frontier(ppo)
    inline = round(fig.get_figwidth() * 100)
    # saved with a tight bounding box, as the inline backend draws it: within a few percent of the figure width
    assert any(abs(img.width - inline) <= 0.05 * inline for img in images), ([i.width for i in images], inline)
    assert max(i.width for i in images) < 720 * 1.5  # not the 150-dpi pixels


def test_the_runs_so_far_figure_draws_what_finished():
    """04's figure while PPO trains: a dot per finished run in its arm's column, the SFT line once evaluated, and
    how many of the runs are done."""
    rows = [{"policy": "bf16", "status": "ok", "judge_mean": 1.1}, {"policy": "int4", "status": "failed",
                                                                    "judge_mean": None}]
    fig = plots.plot_runs_so_far(rows, ["bf16", "int8", "int4"], 6)
    ax = fig.axes[0]
    assert ax.get_title() == "1 of 6 PPO runs finished, 1 failed"
    assert sum(len(c.get_offsets()) for c in ax.collections) == 1 and not ax.get_lines()
    rows.append({"policy": "sft", "status": "ok", "judge_mean": 0.9})
    ax = plots.plot_runs_so_far(rows, ["bf16", "int8", "int4"], 6).axes[0]
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [0.9]


def _spills_over(fig) -> list[float]:
    """How far (inches) what the figure draws reaches past its canvas on each side (left, bottom, right, top): what
    a file saved at the figure's exact size would clip. The tight box is what `bbox_inches="tight"` would keep."""
    box = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer())
    width, height = fig.get_size_inches()
    return [-box.x0, -box.y0, box.x1 - width, box.y1 - height]


@pytest.mark.parametrize("name", ["column", "page"])
def test_paper_styles_draw_every_figure_at_their_width_with_no_text_under_8_points(tmp_path, name):
    """`tinyrlhf plots --style column|page`: every figure exactly 3.3 in / 7 in wide, every text at least 8 pt at
    that width, nothing outside the canvas, no titles; the arms keep their colours."""
    rm, ppo, bon = make_rm_results(), make_ppo_results(), make_bon_results(failed=every_seed("int4"))
    makers = plots.figure_makers({"rm": rm, "ppo": ppo, "bon": bon})
    assert set(makers) == ALL_FIGURES | BON_FIGURES
    with plots.style(name) as chosen:
        for figure, draw in makers.items():
            fig = draw()
            FigureCanvasAgg(fig).draw()  # lays it out (constrained) and creates every tick label
            assert fig.get_figwidth() == pytest.approx(chosen.width), figure
            sizes = {t.get_text(): t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()}
            small = {text: size for text, size in sizes.items() if size < 8}
            assert not small, f"{figure}: text under 8 pt: {small}"
            assert max(_spills_over(fig)) < 0.02, (figure, _spills_over(fig))
            assert fig.get_suptitle() == "", figure
        written = plots.draw_all(write_results(tmp_path, rm, ppo, bon), tmp_path / "paper", name)
    png = matplotlib.image.imread(written["taxes"][0])
    assert png.shape[1] == pytest.approx(chosen.width * 150, abs=2)  # saved at its width, not cropped or grown
    assert colors_by_precision(plots.plot_gold_gain(ppo)) == {a: to_hex(plots.precision_color(a)) for a in ARMS}


def test_the_tax_figure_puts_the_controls_on_their_own_axis():
    """The positive control's large effect must not set the scale on which the precisions' intervals are read."""
    bon, ppo = make_bon_results(), make_ppo_results()
    fig = plots.plot_taxes(bon, ppo)
    panels = {ax.get_title(): ax for ax in fig.axes}
    precisions = [t.get_text() for t in panels["PPO"].get_xticklabels()]
    controls = [t.get_text() for t in panels["PPO: controls"].get_xticklabels()]
    assert not any(c.startswith(("null", "noisy")) for c in precisions) and controls
    assert all(c.startswith(("null", "noisy")) for c in controls)
    assert panels["PPO"].get_ylim() != panels["PPO: controls"].get_ylim()


def test_styles_are_named_alike_in_the_cli_and_checked():
    from tinyrlhf import cli

    parser = cli.make_parser()
    assert parser.parse_args(["plots", "r", "--style", "column"]).style == "column"
    for style in plots.STYLES:
        parser.parse_args(["plots", "r", "--style", style])
    with pytest.raises(ValueError, match="unknown figure style 'poster'.*column"):
        with plots.style("poster"):
            pass
    assert all(c.upper() in {v.upper() for v in plots.PRECISION_COLORS.values()} for c in OKABE_ITO)
    assert set(plots.PRECISION_COLORS.values()) <= set(OKABE_ITO) | {plots.PRECISION_COLORS["sft"]}


# Okabe & Ito (2008), "Color Universal Design": the palette every arm's colour comes from
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
