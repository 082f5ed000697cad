"""Every results table as CSV and as LaTeX, from the JSON files alone: ``tinyrlhf tables RESULTS [OUT]``.

CSV holds the numbers as the JSON does (fractions, not percentages; an interval as `_lo` and `_hi` columns; a missing
value empty), for re-analysis; one arm is called "null", so read it with `pd.read_csv(path, keep_default_na=False,
na_values=[""])`. LaTeX is a booktabs `tabular` for a paper: numbers in math mode (real minus signs), taxes in percent,
intervals as `[lo, hi]`, text escaped; it needs `\\usepackage{booktabs}`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from .results import atomic_write_text, read_json
from .schema import FILE_NAMES


def _interval(entry: dict, key: str) -> dict:
    lo, hi = entry.get(f"{key}_ci95") or (None, None)
    return {key: entry.get(key), f"{key}_lo": lo, f"{key}_hi": hi}


def bon_frame(bon: dict) -> pd.DataFrame:
    """Best-of-n at its headline n (eval.headline_n, or n* when that is 0): one row per arm."""
    rows = []
    for arm, e in bon["arms"].items():
        star = e.get("at_n_star") or {}
        rows.append({"arm": arm, "n": star.get("n"), **_interval(star, "gold_gain_vs_sft"),
                     **_interval(star, "tax_vs_bf16"), **_interval(star, "gain_diff_vs_bf16"),
                     **_interval(star, "tax_minus_null"), "seeds": len(e.get("seeds_ok") or []),
                     "status": e.get("status")})
    return pd.DataFrame(rows)


def bits_frame(bon: dict) -> pd.DataFrame:
    """Best-of-n's bits sweep at the headline n: one row per width served (bf16-trained models at k-bit weights)."""
    sweep = bon.get("bits") or {}
    return pd.DataFrame([{"bits": r["bits"], "n": r.get("n"), **_interval(r, "tax_vs_bf16"),
                          **_interval(r, "gain_diff_vs_bf16"), "sign_flip_p": r.get("sign_flip_p"),
                          "onset": r["bits"] == sweep.get("onset_bits")} for r in sweep.get("rows") or []])


def ppo_frame(ppo: dict) -> pd.DataFrame:
    """PPO: one row per arm, over its reward-model seeds and PPO runs."""
    return pd.DataFrame([{"arm": arm, **_interval(e, "gold_gain_vs_sft"), **_interval(e, "tax_vs_bf16"),
                          **_interval(e, "gain_diff_vs_bf16"), "kl": e.get("kl_mean"), "eos_share": e.get("eos_share"),
                          "win_rate_vs_sft": e.get("win_rate_vs_sft"), "status": e.get("status")}
                         for arm, e in ppo["arms"].items()])


def rm_frame(rm: dict) -> pd.DataFrame:
    """Reward models: one row per arm over its seeds."""
    return pd.DataFrame([{"arm": arm, "seeds": len(e.get("seeds") or []), "accuracy_mean": e.get("accuracy_mean"),
                          "accuracy_min": e.get("accuracy_min"), "accuracy_max": e.get("accuracy_max"),
                          "above_chance_share": e.get("above_chance_share"), "footprint_bytes": e.get("footprint_bytes"),
                          "status": e.get("status")} for arm, e in rm["arms"].items()])


# name -> (result kind, frame, LaTeX columns: (header, column, format, scale))
TABLES = {
    "bon": ("bon", bon_frame, [("arm", "arm", None, 1), ("$n$", "n", "d", 1),
                               ("gold gain", "gold_gain_vs_sft", "+.3f", 1), ("tax (\\%)", "tax_vs_bf16", "+.1f", 100),
                               ("gain $-$ bf16's", "gain_diff_vs_bf16", "+.3f", 1), ("seeds", "seeds", "d", 1)]),
    "bon_bits": ("bon", bits_frame, [("bits", "bits", "d", 1), ("$n$", "n", "d", 1),
                                     ("tax (\\%)", "tax_vs_bf16", "+.1f", 100),
                                     ("gain $-$ bf16's", "gain_diff_vs_bf16", "+.3f", 1),
                                     ("sign-flip $p$", "sign_flip_p", ".3f", 1)]),
    "ppo": ("ppo", ppo_frame, [("arm", "arm", None, 1), ("gold gain", "gold_gain_vs_sft", "+.3f", 1),
                               ("tax (\\%)", "tax_vs_bf16", "+.0f", 100),
                               ("gain $-$ bf16's", "gain_diff_vs_bf16", "+.3f", 1), ("KL", "kl", ".2f", 1)]),
    "rm": ("rm", rm_frame, [("arm", "arm", None, 1), ("seeds", "seeds", "d", 1),
                            ("accuracy", "accuracy_mean", ".3f", 1), ("min", "accuracy_min", ".3f", 1),
                            ("max", "accuracy_max", ".3f", 1)]),
}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value, fmt: str, scale: float) -> str:
    if _missing(value):
        return "--"
    return f"${int(value):d}$" if fmt == "d" else f"${value * scale:{fmt}}$"


def escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text


def latex(frame: pd.DataFrame, columns) -> str:
    """A booktabs tabular: each numeric column with its interval beside it when the frame has one."""
    header, spec, body = [], [], [[] for _ in range(len(frame))]
    for title, col, fmt, scale in columns:
        header.append(title)
        spec.append("l" if fmt is None else "r")
        has_ci = f"{col}_lo" in frame
        if has_ci:
            header.append("95\\% CI")
            spec.append("l")
        for i, row in enumerate(frame.to_dict("records")):
            body[i].append(escape(str(row[col])) if fmt is None else _number(row[col], fmt, scale))
            if has_ci:
                lo, hi = row[f"{col}_lo"], row[f"{col}_hi"]
                body[i].append("--" if _missing(lo) else
                               f"$[{lo * scale:{fmt}}, {hi * scale:{fmt}}]$".replace("+", ""))
    lines = [f"\\begin{{tabular}}{{{''.join(spec)}}}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    lines += [" & ".join(cells) + " \\\\" for cells in body]
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}", ""])


def provenance(result: dict) -> str:
    """LaTeX comment lines saying where a table's numbers come from (profile, commit, CPU kind) and, on the cpu
    profile, that its "bf16" arm computed in float32."""
    m = result.get("manifest") or {}
    hardware, rm = m.get("hardware") or {}, (m.get("config") or {}).get("rm") or {}
    lines = [f"% tinyrlhf: {m.get('stage')} stage, profile {m.get('profile')}, commit "
             f"{(m.get('git_commit') or 'unknown')[:12]}, CPU kind {hardware.get('cpu_kind') or 'unrecorded'}"]
    if rm.get("cpu_dtype") == "fp32" and not hardware.get("cuda"):
        lines.append('% the "bf16" arm computed in float32 here (rm.cpu_dtype = "fp32" on a CPU)')
    return "\n".join(lines) + "\n"


def write_all(results: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, list[Path]]:
    """Every table whose result file is in `results`, as OUT/<name>.csv and OUT/<name>.tex (default OUT:
    RESULTS/tables); returns the files written by table."""
    results = Path(results)
    out = Path(out) if out else results / "tables"
    written = {}
    for name, (kind, make, columns) in TABLES.items():
        path = results / FILE_NAMES[kind]
        if not path.exists():
            continue
        result = read_json(path)
        frame = make(result)
        if frame.empty:  # e.g. no bits sweep in this run
            continue
        csv, tex = out / f"{name}.csv", out / f"{name}.tex"
        atomic_write_text(csv, frame.to_csv(index=False))
        atomic_write_text(tex, provenance(result) + latex(frame, columns))
        written[name] = [csv, tex]
    if not written:
        raise FileNotFoundError(f"no result files in {results} ({', '.join(FILE_NAMES[k] for k, *_ in TABLES.values())})"
                                ": run the notebooks (or `tinyrlhf run`) first")
    return written
