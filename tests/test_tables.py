"""`tinyrlhf tables`: every results table as CSV (the JSON's numbers) and LaTeX (booktabs) from the JSON alone."""

import re
import shutil
import subprocess

import pandas as pd
import pytest

from test_plots import write_results
from test_schema import make_bon_results, make_ppo_results, make_rm_results

from tinyrlhf import cli, tables
from tinyrlhf.results import read_json


def _check_latex(tex: str) -> None:
    """What a TeX engine would refuse, checked without one: one environment, booktabs rules, as many cells in every
    row as columns, balanced braces and math."""
    lines = [line for line in tex.strip().splitlines() if not line.startswith("%")]  # provenance comments first
    spec = re.match(r"\\begin\{tabular\}\{([lr]+)\}$", lines[0]).group(1)
    assert lines[1] == "\\toprule" and lines[3] == "\\midrule" and lines[-2:] == ["\\bottomrule", "\\end{tabular}"]
    for row in [lines[2], *lines[4:-2]]:
        assert row.endswith("\\\\") and len(re.split(r"(?<!\\)&", row)) == len(spec), row
        assert row.count("{") == row.count("}") and (row.count("$") - row.count("\\$")) % 2 == 0, row
    assert "−" not in tex  # a Unicode minus would not typeset in pdfLaTeX's default font encoding


def _compile(tex_files, tmp_path) -> None:
    """Build the tables in a minimal document where a TeX engine is installed."""
    engine = shutil.which("pdflatex")
    if engine is None:
        return
    body = "\n".join(f"\\input{{{p}}}\n\n" for p in tex_files)
    doc = tmp_path / "tables.tex"
    doc.write_text(f"\\documentclass{{article}}\\usepackage{{booktabs}}\\begin{{document}}\n{body}\\end{{document}}\n")
    subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)


def test_latex_escapes_text_and_writes_real_minus_signs_and_intervals():
    frame = pd.DataFrame([{"arm": "served_int4 & co", "tax_vs_bf16": -0.0104, "tax_vs_bf16_lo": -0.058,
                           "tax_vs_bf16_hi": 0.038, "seeds": 7}])
    tex = tables.latex(frame, [("arm", "arm", None, 1), ("tax (\\%)", "tax_vs_bf16", "+.1f", 100),
                               ("seeds", "seeds", "d", 1)])
    _check_latex(tex)
    assert "served\\_int4 \\& co & $-1.0$ & $[-5.8, 3.8]$ & $7$ \\\\" in tex


def test_tables_hold_the_json_numbers_and_the_latex_builds(tmp_path):
    results = tmp_path / "results"
    write_results(results, make_rm_results(), make_ppo_results(), make_bon_results())
    assert cli.main(["tables", str(results), str(tmp_path / "out")]) == 0
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {f"{name}.{ext}" for name in ("rm", "bon", "bon_bits", "ppo") for ext in ("csv", "tex")}
    bon = read_json(results / "bon_results.json")
    bits = pd.read_csv(tmp_path / "out" / "bon_bits.csv").set_index("bits")
    for row in bon["bits"]["rows"]:
        assert [bits.loc[row["bits"], "tax_vs_bf16_lo"], bits.loc[row["bits"], "tax_vs_bf16_hi"]] == pytest.approx(
            row["tax_vs_bf16_ci95"], rel=1e-12)
    assert list(bits.index) == [2, 3, 4, 8]
    csv = pd.read_csv(tmp_path / "out" / "bon.csv", keep_default_na=False, na_values=[""]).set_index("arm")
    for arm, entry in bon["arms"].items():
        star = entry["at_n_star"]
        assert csv.loc[arm, "gold_gain_vs_sft"] == pytest.approx(star["gold_gain_vs_sft"], rel=1e-12)
        if star.get("tax_vs_bf16_ci95") is not None:
            assert [csv.loc[arm, "tax_vs_bf16_lo"], csv.loc[arm, "tax_vs_bf16_hi"]] == pytest.approx(
                star["tax_vs_bf16_ci95"], rel=1e-12)
    ppo = read_json(results / "ppo_experiment_results.json")
    csv = pd.read_csv(tmp_path / "out" / "ppo.csv", keep_default_na=False, na_values=[""]).set_index("arm")
    gains = {arm: e["gold_gain_vs_sft"] for arm, e in ppo["arms"].items() if e.get("gold_gain_vs_sft") is not None}
    assert gains and {arm: csv.loc[arm, "gold_gain_vs_sft"] for arm in gains} == pytest.approx(gains, rel=1e-12)
    assert len(csv) == len(ppo["arms"])
    tex_files = sorted((tmp_path / "out").glob("*.tex"))
    for tex in tex_files:
        _check_latex(tex.read_text())
    _compile(tex_files, tmp_path)
    with pytest.raises(FileNotFoundError, match="no result files"):
        tables.write_all(tmp_path / "empty")


def test_every_table_says_where_its_numbers_come_from_and_what_bf16_computed_in():
    """A LaTeX table starts with comment lines naming the stage, profile, commit and CPU kind, and on the cpu
    profile that its "bf16" arm computed in float32; 03 and 04 say the same in words."""
    from tinyrlhf import display

    ppo = make_ppo_results()
    ppo["manifest"] |= {"git_commit": "0123456789abcdef", "config": {"rm": {"cpu_dtype": "fp32"}},
                        "hardware": {"cuda": False, "cpu_kind": "avx2"}}
    head = tables.provenance(ppo)
    assert head.startswith("% tinyrlhf: ppo stage, profile cpu, commit 0123456789ab, CPU kind avx2\n")
    assert 'computed in float32' in head and all(line.startswith("%") for line in head.splitlines())
    assert any("computes in float32" in line for line in display.tax_sentences(ppo))
    ppo["manifest"]["hardware"]["cuda"] = True  # on a card, bf16 is bf16: nothing to say
    assert "float32" not in tables.provenance(ppo) and display.compute_dtype_line(ppo) is None
