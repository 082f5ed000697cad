"""Figures and tables drawn from result JSON files (fake but realistic results, built in test_schema.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from tinyrlhf import plots
from tinyrlhf.results import atomic_write_json
from tinyrlhf.schema import SchemaError

sys.path.insert(0, str(Path(__file__).parent))  # the builders live beside this file, in test_schema.py
from test_schema import PRECISIONS, make_ppo_results, make_rm_results  # noqa: E402

ALL_FIGURES = {"rm_accuracy", "rm_costs", "ppo_final_reward", "ppo_training_curves", "ppo_reward_vs_kl",
               "ppo_time_memory", "ppo_cross_matrix", "rm_vs_ppo"}
REASON = "CUDA out of memory at step 3"


def write_results(folder: Path, rm: dict | None, ppo: dict | None) -> Path:
    """Save results the way the stages do (atomic, strict JSON)."""
    if rm is not None:
        atomic_write_json(folder / "rm_results.json", rm)
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
    ppo["precisions"]["int8"]["kl_mean"] = "small"
    write_results(tmp_path, None, ppo)
    with pytest.raises(SchemaError, match=r"ppo_experiment_results\.json: \$\.precisions\.int8\.kl_mean"):
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


def test_each_precision_has_one_colour_across_figures():
    rm, ppo = make_rm_results(), make_ppo_results()
    figures = [plots.plot_rm_accuracy(rm), plots.plot_training_curves(ppo), plots.plot_reward_vs_kl(ppo),
               plots.plot_final_reward(ppo), plots.plot_rm_vs_ppo(rm, ppo)]
    expected = {p: to_hex(plots.precision_color(p)) for p in PRECISIONS}
    for fig in figures:
        colors = colors_by_precision(fig)
        assert {p: colors[p] for p in PRECISIONS} == expected
    assert len(set(expected.values())) == 3
    assert to_hex(plots.precision_color("sft")) not in expected.values()
    with pytest.raises(KeyError, match="bf16"):
        plots.precision_color("fp8")


def test_failed_precision_is_an_annotated_gap_not_a_crash(tmp_path):
    rm = make_rm_results(failed={"int4": REASON})
    ppo = make_ppo_results(failed={"int4": REASON})
    figures = {name: draw(rm) for name, draw in plots.RM_FIGURES.items()}
    figures |= {name: draw(ppo) for name, draw in plots.PPO_FIGURES.items()}
    figures["rm_vs_ppo"] = plots.plot_rm_vs_ppo(rm, ppo)
    for name, fig in figures.items():
        text = figure_text(fig)
        if name == "ppo_cross_matrix":
            assert "—" in text  # the failed policy's and judge's cells are marked as missing
        else:
            assert "failed" in text and REASON in text, f"{name}: {text}"
        assert "int4" not in colors_by_precision(fig), name  # nothing drawn for it
    # And the whole pipeline, from files, with bf16 (the baseline of the tax) failed as well.
    write_results(tmp_path, rm, make_ppo_results(failed={"bf16": "diverged", "int4": REASON}))
    assert set(plots.draw_all(tmp_path)) == ALL_FIGURES


def test_summary_table_formats_and_marks_missing_values():
    ppo = make_ppo_results()
    table = plots.summary_table(ppo)
    assert list(table.columns) == ["RM precision", "final judged reward", "gain vs SFT", "tax vs bf16", "KL",
                                   "win rate vs SFT", "time (s)", "peak memory (MiB)", "status"]
    assert list(table["RM precision"]) == list(PRECISIONS)
    bf16 = ppo["precisions"]["bf16"]
    row = table.iloc[0]
    assert row["final judged reward"] == f"{bf16['judged_reward_mean']:.3f} ± {bf16['judged_reward_std']:.3f}"
    assert all(re.fullmatch(r"-?\d+\.\d{3} ± \d+\.\d{3}", v) for v in table["final judged reward"])
    assert row["tax vs bf16"] == "+0.0%" and row["status"] == "ok"
    assert row["peak memory (MiB)"] == f"{bf16['peak_memory_bytes_max'] / 2**20:.0f}"

    failed = plots.summary_table(make_ppo_results(failed={"bf16": "diverged"}))
    bf16_row, int8_row = failed.iloc[0], failed.iloc[1]
    assert bf16_row["final judged reward"] == bf16_row["KL"] == "failed"
    assert bf16_row["status"] == "failed: diverged"
    assert int8_row["tax vs bf16"] == "—"  # no baseline, no tax
    ppo = make_ppo_results()
    ppo["precisions"]["int8"]["judged_reward_std"] = float("nan")  # as read back in memory, before JSON
    assert plots.summary_table(ppo).iloc[1]["final judged reward"].count("±") == 0


def test_rm_table_formats_accuracy_with_its_interval():
    rm = make_rm_results(failed={"int4": REASON})
    rm["precisions"]["int8"]["rank_correlation_with_bf16"] = None
    table = plots.rm_table(rm)
    assert table.iloc[0]["accuracy [95% CI]"] == "0.83 [0.78, 0.88]"
    assert table.iloc[1]["rank corr. with bf16"] == "—"
    assert table.iloc[2]["accuracy [95% CI]"] == "failed"
    assert table.iloc[2]["status"] == f"failed: {REASON}"
    assert table.iloc[0]["footprint (MiB)"] == "48.0"


def test_import_keeps_a_chosen_backend_and_stays_light():
    code = "import sys, matplotlib, tinyrlhf.plots; print(matplotlib.get_backend(), 'torch' in sys.modules)"
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "False"]
