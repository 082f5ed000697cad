"""Figures and tables of the experiment, drawn from the result JSON files alone.

Everything here reads the dicts stored in ``results/rm_results.json`` and ``results/ppo_experiment_results.json``
(never live models or trainers), so a paper's figures can be redrawn from those files on any machine:

    python -m tinyrlhf.plots results/ [out_dir]        # or: draw_all("results", "paper/figures")

Functions return ``matplotlib.figure.Figure`` objects that are not registered with pyplot: nothing global is
touched and they never pile up in pyplot's figure manager. A notebook shows them with ``display(fig)`` or as a
cell's last expression once the inline backend is active (``%matplotlib inline``, or any import of pyplot).
One colour per precision everywhere (PRECISION_COLORS). A failed precision is drawn as an annotated gap
("failed: reason"), never an exception.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from pathlib import Path

import matplotlib

# Headless runs (CLI, CI) get Agg; a backend someone chose (Jupyter's inline backend sets MPLBACKEND) is kept.
if matplotlib.get_backend(auto_select=False) is None:
    matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .results import atomic_file
from .schema import FILE_NAMES, validate_file

# Okabe-Ito palette: distinguishable under the common colour-vision deficiencies and in greyscale print.
PRECISION_COLORS = {"bf16": "#0072B2", "int8": "#009E73", "int4": "#D55E00", "null": "#CC79A7", "judge": "#000000",
                    "sft": "#999999"}
ARMS = ("bf16", "int8", "int4", "null", "judge")  # the canonical order of arms in every figure and table
ARM_LABELS = {"null": "null (bf16, other seed)", "judge": "heldout judge"}
MIB = 2**20
MISSING = "—"
DONE = ("ok", "partial")  # statuses whose aggregate metrics exist ("partial": some seeds failed)

# Embed TrueType (Type 42) fonts rather than Type 3: journals require it and the text stays editable.
_PAPER_RC = {"pdf.fonttype": 42, "ps.fonttype": 42}


def precision_color(precision: str) -> str:
    """The colour of a precision ("bf16", "int8", "int4") or of the SFT reference ("sft")."""
    try:
        return PRECISION_COLORS[precision]
    except KeyError:
        raise KeyError(f"no colour for {precision!r}; known: {', '.join(PRECISION_COLORS)}") from None


def _gid(precision: str) -> str:
    """Id of the main artist drawn for a precision, so tests and tools can find it in any figure."""
    return f"precision={precision}"


def save_figure(fig: Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Save `fig` as out_dir/name.png (150 dpi) and out_dir/name.pdf (TrueType fonts), atomically; close it."""
    out_dir = Path(out_dir)
    written = []
    # CreationDate off: the same results give byte-identical PDFs, so figure diffs mean changed numbers.
    formats = {"png": {"dpi": 150}, "pdf": {"metadata": {"CreationDate": None}}}
    with matplotlib.rc_context(_PAPER_RC):
        for fmt, options in formats.items():
            path = out_dir / f"{name}.{fmt}"
            with atomic_file(path, "wb") as f:
                fig.savefig(f, format=fmt, bbox_inches="tight", **options)
            written.append(path)
    if "matplotlib.pyplot" in sys.modules:  # only a pyplot-made figure is registered anywhere
        sys.modules["matplotlib.pyplot"].close(fig)
    return written


# ---------------------------------------------------------------------------------------------------- helpers
def _arms(*results: dict) -> list[str]:
    """Arms present in any of the results, in the canonical order."""
    present = set().union(*(r["arms"] for r in results))
    return [a for a in ARMS if a in present]


def arm_label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def _done(entry: dict | None) -> bool:
    return bool(entry) and entry.get("status") in DONE


def _value(entry: dict | None, key: str):
    """A metric of a finished run, or None (failed run, missing key, null or NaN)."""
    if not _done(entry):
        return None
    v = entry.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _reason(entry: dict | None, width: int | None = None) -> str:
    reason = (entry or {}).get("reason") or "no reason given"
    return textwrap.shorten(reason, width, placeholder="…") if width else reason


def _failure_label(entry: dict | None) -> str:
    return "failed: " + _reason(entry) if entry else "not run"


def _mark_gap(ax, x: float, text: str) -> None:
    """Annotate an empty slot on a categorical axis (y in axes units, so it works on any scale)."""
    ax.text(x, 0.5, textwrap.fill(text, 28), transform=ax.get_xaxis_transform(), rotation=90, ha="center",
            va="center", fontsize=7, color="0.25", bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})


def _legend_failures(ax, results: dict) -> None:
    """Failed arms get a legend entry in their colour, since a line or scatter plot has no slot for them."""
    for arm in _arms(results):
        entry = results["arms"][arm]
        if not _done(entry):
            ax.plot([], [], ls=":", color=precision_color(arm), label=f"{arm}: failed ({_reason(entry, 50)})")


def _outside_legend(ax, **kw) -> None:
    """A legend beside the axes, where it covers no data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, **kw)


def _categorical(ax, arms: list[str]) -> None:
    ax.set_xticks(range(len(arms)), [arm_label(a).replace(" (", "\n(") for a in arms])
    for tick, arm in zip(ax.get_xticklabels(), arms):
        tick.set_color(precision_color(arm))
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.set_xlabel("reward model (arm)")


def _yerr(value: float, interval) -> list[list[float]] | None:
    """Asymmetric error bar from a [low, high] interval (clipped: a bootstrap CI may miss its point estimate)."""
    if interval is None or None in interval:
        return None
    low, high = interval
    return [[max(value - low, 0.0)], [max(high - value, 0.0)]]


def _bars(ax, results: dict, key: str, *, arms: list[str], scale: float = 1.0, interval_key=None,
          label_fmt: str | None = None) -> None:
    """One bar per arm; failed arms are annotated gaps and a missing value says so."""
    for i, arm in enumerate(arms):
        entry = results["arms"].get(arm)
        value = _value(entry, key)
        if not _done(entry):
            _mark_gap(ax, i, _failure_label(entry))
            continue
        if value is None:
            _mark_gap(ax, i, f"{key}: n/a")
            continue
        value = value / scale
        interval = _value(entry, interval_key) if interval_key else None
        if interval is not None:
            interval = [b / scale for b in interval]
        ax.bar(i, value, width=0.6, color=precision_color(arm), yerr=_yerr(value, interval), capsize=4,
               gid=_gid(arm), error_kw={"elinewidth": 1})
        if label_fmt:
            ax.annotate(label_fmt.format(value), (i, value), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom" if value >= 0 else "top", fontsize=7)
    _categorical(ax, arms)


def _seed_runs(entry: dict | None, *, ok_only: bool = True) -> list[dict]:
    seeds = (entry or {}).get("seeds") or []
    return [s for s in seeds if s.get("status") == "ok" or not ok_only]


# ---------------------------------------------------------------------------------------------- reward models
def _draw_rm_accuracy(ax, rm: dict, arms: list[str]) -> None:
    _bars(ax, rm, "accuracy", arms=arms, interval_key="accuracy_ci95")
    ax.axhline(0.5, color="black", ls=":", lw=1, label="chance")
    ax.set_ylim(0, 1.05)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("preference accuracy (test pairs)")


def plot_rm_accuracy(rm: dict) -> Figure:
    """Test-set preference accuracy per reward model, overall and per category of pair (95% Wilson intervals),
    with the chance line."""
    arms = _arms(rm)
    categories = sorted({c for e in rm["arms"].values() if _done(e) for c in (e.get("by_category") or {})})
    fig = Figure(figsize=(4.0 + 2.4 * bool(categories), 3.4), layout="constrained")
    axes = fig.subplots(1, 2 if categories else 1, squeeze=False)[0]
    _draw_rm_accuracy(axes[0], rm, arms)
    n = {e.get("n_test_pairs") for e in rm["arms"].values() if _done(e)} - {None}
    axes[0].set_title("overall" + (f", n = {n.pop()} pairs" if len(n) == 1 else ""), fontsize=10)
    if categories:
        ax, width = axes[1], 0.8 / max(1, len(arms))
        for j, arm in enumerate(arms):
            entry = rm["arms"][arm]
            if not _done(entry):
                continue
            by = entry.get("by_category") or {}
            for i, c in enumerate(categories):
                if c in by:
                    acc, ci = by[c]["accuracy"], by[c]["accuracy_ci95"]
                    ax.bar(i + (j - (len(arms) - 1) / 2) * width, acc, width=width, color=precision_color(arm),
                           yerr=_yerr(acc, ci), capsize=2, error_kw={"elinewidth": 0.8},
                           label=arm_label(arm) if i == 0 else None, gid=_gid(arm) if i == 0 else None)
        ax.axhline(0.5, color="black", ls=":", lw=1, label="chance")
        ax.set_xticks(range(len(categories)), [c.replace("_", "-") for c in categories])
        ax.set_ylim(0, 1.05)
        ax.set_title("by category of rejected reply", fontsize=10)
        _outside_legend(ax)
    fig.suptitle("Reward-model accuracy (95% CI)", fontsize=11)
    return fig


def plot_rm_costs(rm: dict) -> Figure:
    """Footprint, training time and scoring throughput per reward model, as small multiples."""
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    panels = [("footprint_bytes", MIB, "footprint (MiB)", "{:.2f}"),
              ("train_seconds", 1.0, "training time (s)", "{:.0f}"),
              ("throughput_pairs_per_s", 1.0, "CPU scoring (pairs/s)", "{:.0f}")]
    arms = _arms(rm)
    for ax, (key, scale, label, fmt) in zip(fig.subplots(1, 3), panels):
        _bars(ax, rm, key, arms=arms, scale=scale, label_fmt=fmt)
        ax.set_title(label, fontsize=10)
        ax.margins(y=0.12)
    fig.suptitle("Reward-model costs", fontsize=11)
    return fig


# ------------------------------------------------------------------------------------------------------- PPO
def _ppo_arms(ppo: dict) -> list[str]:
    return [a for a in _arms(ppo) if a != "judge"]


def _point_with_interval(ax, i, arm: str, entry: dict, key: str, *, fmt: str, missing: str, scale: float = 1.0):
    """One arm's `key` with its `key`_ci95 as an error bar at x = i, or an annotated gap when it has none (a failed
    arm says why). Returns the value, or None for a gap."""
    value = _value(entry, key)
    if value is None:
        _mark_gap(ax, i, _failure_label(entry) if not _done(entry) else missing)
        return None
    ci = _value(entry, f"{key}_ci95")
    ax.errorbar(i, value * scale, yerr=_yerr(value * scale, None if ci is None else [c * scale for c in ci]),
                fmt=fmt, ms=8, capsize=5, color=precision_color(arm), gid=_gid(arm), zorder=3)
    return value


def plot_gold_gain(ppo: dict) -> Figure:
    """The judge's gain over the SFT policy per arm: bootstrap 95% interval, seeds as open dots."""
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    arms = _ppo_arms(ppo)
    sft = ppo["sft"]["judge_mean"]
    for i, arm in enumerate(arms):
        entry = ppo["arms"][arm]
        if _point_with_interval(ax, i, arm, entry, "gold_gain_vs_sft", fmt="o", missing="gain: n/a") is None:
            continue
        color = precision_color(arm)
        seeds = [s["judge_mean"] - sft for s in _seed_runs(entry)]
        jitter = np.linspace(-0.1, 0.1, len(seeds)) if len(seeds) > 1 else [0.0] * len(seeds)
        ax.scatter(np.add(i + 0.25, jitter), seeds, s=14, facecolors="none", edgecolors=color, lw=1, zorder=2)
    ax.axhline(0, color=precision_color("sft"), ls="--", lw=1.2, label=f"SFT policy ({sft:.3f})")
    _categorical(ax, arms)
    ax.set_ylabel("judge's reward gain over SFT")
    ax.set_title(f"Gain over SFT under the judge ({ppo['judge']['kind']}), 95% CI", fontsize=10)
    _outside_legend(ax)
    return fig


def plot_tax(ppo: dict) -> Figure:
    """Tax relative to bf16 per arm with its 95% interval; the null arm's interval shaded across: a tax inside it
    is within the noise of retraining the reward model with another seed."""
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.add_subplot()
    arms = [a for a in _ppo_arms(ppo) if a != "bf16"]
    null = ppo["arms"].get(ppo.get("null_arm") or "", {})
    band = _value(null, "tax_vs_bf16_ci95")
    if band:
        ax.axhspan(band[0] * 100, band[1] * 100, color=precision_color("null"), alpha=0.15, lw=0,
                   label="null arm's 95% interval")
    for i, arm in enumerate(arms):
        _point_with_interval(ax, i, arm, ppo["arms"][arm], "tax_vs_bf16", fmt="s", scale=100, missing="tax: n/a")
    ax.axhline(0, color="black", lw=0.8)
    _categorical(ax, arms)
    ax.set_ylabel("tax vs bf16 (% of bf16's gain lost)")
    ax.set_title("Quantization tax, 95% CI (seeds x prompts bootstrap)", fontsize=10)
    _outside_legend(ax)
    return fig


def plot_frontier(ppo: dict) -> Figure:
    """Gao et al.'s frontier: judge and proxy gain over SFT against d = sqrt(KL) at every checkpoint of every
    run, and R(d) = d (alpha - beta log d) fitted to the judge's points."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_gold, ax_proxy = fig.subplots(1, 2, sharex=True)
    for arm in _ppo_arms(ppo):
        entry = ppo["arms"][arm]
        front = _value(entry, "frontier")
        if not front:
            continue
        color = precision_color(arm)
        points = [p for p in front["points"] if p.get("seed") is not None]
        d = [p["d"] for p in points]
        ax_gold.scatter(d, [p["gold_gain"] for p in points], s=12, color=color, alpha=0.55, gid=_gid(arm))
        ax_proxy.scatter(d, [p["proxy_gain"] for p in points], s=12, color=color, alpha=0.55)
        fit = front["fit"]
        if fit.get("alpha") is not None and d:
            x = np.linspace(1e-3, max(d) * 1.05, 100)
            ax_gold.plot(x, x * (fit["alpha"] - fit["beta"] * np.log(x)), color=color, lw=1.8,
                         label=f"{arm_label(arm)}: α={fit['alpha']:.2f}, β={fit['beta']:.2f}")
    _legend_failures(ax_gold, ppo)
    for ax, what in ((ax_gold, "judge"), (ax_proxy, "own reward model (proxy)")):
        ax.axhline(0, color=precision_color("sft"), ls="--", lw=1)
        ax.set_xlabel("d = sqrt(KL to the SFT policy)")
        ax.set_ylabel(f"gain over SFT, {what}")
    ax_gold.set_title("Judge: points and R(d) = d(α − β log d)", fontsize=10)
    ax_proxy.set_title("Proxy: each arm's own reward model", fontsize=10)
    _outside_legend(ax_gold)
    fig.suptitle("Reward against KL along PPO (every checkpoint of every seed)", fontsize=11)
    return fig


def _history_frame(seed: dict) -> pd.DataFrame:
    return pd.DataFrame(seed.get("history") or [], columns=["step", "reward", "kl"]).astype(float)


def plot_training_curves(ppo: dict) -> Figure:
    """Training reward (the arm's own reward model) and KL per PPO update: mean over seeds, thin per seed."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    labels = {"reward": "training reward (own reward model)", "kl": "KL to the SFT policy"}
    for ax, metric in zip(axes, ("reward", "kl")):
        for arm in _ppo_arms(ppo):
            entry = ppo["arms"][arm]
            color = precision_color(arm)
            # Seeds that failed midway still show how far they got, but only finished ones enter the mean.
            for seed in _seed_runs(entry, ok_only=False):
                h = _history_frame(seed)
                if len(h):
                    ax.plot(h["step"], h[metric], color=color, lw=0.7, alpha=0.3)
            finished = [h for h in (_history_frame(s) for s in _seed_runs(entry)) if len(h)]
            if finished:
                mean = pd.concat(finished).groupby("step")[metric].mean()
                ax.plot(mean.index, mean.to_numpy(), color=color, lw=2, label=f"{arm_label(arm)} "
                        f"(mean of {len(finished)})", gid=_gid(arm))
        _legend_failures(ax, ppo)
        ax.set_xlabel("PPO update")
        ax.set_title(labels[metric], fontsize=10)
    _outside_legend(axes[1])
    fig.suptitle("PPO training curves (thin: individual seeds)", fontsize=11)
    return fig


def plot_time_memory(ppo: dict) -> Figure:
    """PPO training time (mean over seeds) and peak memory (max over seeds) per arm."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax_time, ax_mem = fig.subplots(1, 2)
    arms = _ppo_arms(ppo)
    _bars(ax_time, ppo, "train_seconds_mean", arms=arms, label_fmt="{:.0f}")
    _bars(ax_mem, ppo, "peak_memory_bytes_max", arms=arms, scale=MIB, label_fmt="{:.0f}")
    ax_time.set_title("training time per seed (s)", fontsize=10)
    ax_mem.set_title("peak memory (MiB)", fontsize=10)
    for ax in (ax_time, ax_mem):
        ax.margins(y=0.12)
    fig.suptitle("PPO cost per arm", fontsize=11)
    return fig


def plot_rm_vs_ppo(rm: dict, ppo: dict) -> Figure:
    """Does reward-model accuracy predict alignment? Accuracy beside the judge's gain over SFT, per arm."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_rm, ax_gain = fig.subplots(1, 2)
    arms = [a for a in _arms(rm, ppo) if a != "judge"]
    _draw_rm_accuracy(ax_rm, rm, arms)
    ax_rm.set_title("reward-model accuracy (95% CI)", fontsize=10)
    _bars(ax_gain, ppo, "gold_gain_vs_sft", arms=arms, interval_key="gold_gain_vs_sft_ci95")
    ax_gain.axhline(0, color=precision_color("sft"), ls="--", lw=1)
    ax_gain.margins(y=0.2)
    ax_gain.set_ylabel("judge's gain over SFT")
    ax_gain.set_title("PPO gain over SFT (95% CI)", fontsize=10)
    return fig


def plot_cross_matrix(ppo: dict) -> Figure:
    """Mean reward of each policy (rows) under the judge and each arm's reward model (columns)."""
    m = ppo["cross_matrix"]
    values = np.array([[np.nan if v is None else v for v in row] for row in m["mean_reward"]], dtype=float)
    fig = Figure(figsize=(1.3 * len(m["judges"]) + 2.6, 0.55 * len(m["policies"]) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    # Each column on its own scale: the judge and the reward models do not share units.
    shown = (values - np.nanmin(values, 0)) / np.where(np.ptp(np.nan_to_num(values), 0) > 0,
                                                        np.ptp(np.nan_to_num(values), 0), 1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")  # perceptually uniform, CVD-safe
    ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, aspect="auto", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(values):
        dark = np.isfinite(v) and shown[r, c] < 0.6
        ax.text(c, r, MISSING if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=9,
                color="white" if dark else "black")
    ax.set_xticks(range(len(m["judges"])), [("judge" if j == "judge" else f"{j} RM") for j in m["judges"]])
    ax.set_yticks(range(len(m["policies"])),
                  ["SFT policy" if p == "sft" else f"PPO vs {arm_label(p)}" for p in m["policies"]])
    for tick, name in [*zip(ax.get_xticklabels(), m["judges"]), *zip(ax.get_yticklabels(), m["policies"])]:
        if name in PRECISION_COLORS:
            tick.set_color(precision_color(name))
    ax.set_xlabel("scored by (colour: rank within each column)")
    ax.set_title("Every policy under the judge and every reward model", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------- tables
def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    return format(value, spec)


def _with_ci(entry: dict, key: str, spec: str, scale: float = 1.0, unit: str = "") -> str:
    """"0.42 [0.31, 0.55]" with non-breaking spaces, so it never wraps; "failed" for a failed run."""
    if not _done(entry):
        return "failed"
    v, ci = _value(entry, key), _value(entry, f"{key}_ci95")
    if v is None:
        return MISSING
    text = _fmt(v * scale, spec) + unit
    if ci is not None:
        text += f" [{_fmt(ci[0] * scale, spec)}{unit}, {_fmt(ci[1] * scale, spec)}{unit}]"
    return text.replace(" ", "\u00a0")


def _cell(entry: dict, key: str, spec: str, scale: float = 1.0) -> str:
    if not _done(entry):
        return "failed"
    v = _value(entry, key)
    return _fmt(None if v is None else v / scale, spec)


def _status(entry: dict) -> str:
    status = entry.get("status", "?")
    if status == "failed":
        return f"failed: {_reason(entry, 80)}"
    seeds = entry.get("seeds")
    if status == "partial" and seeds:
        return f"partial ({len(_seed_runs(entry))}/{len(seeds)} seeds)"
    return status


def distinguishable_from_null(entry: dict) -> bool | None:
    """Does the arm's tax differ from the null arm's (the interval of their difference excludes 0)?"""
    ci = _value(entry, "tax_minus_null_ci95")
    return None if ci is None else not (ci[0] <= 0 <= ci[1])


def summary_table(ppo: dict) -> pd.DataFrame:
    """The experiment's headline table: one row per arm."""
    rows = []
    for arm in _ppo_arms(ppo):
        e = ppo["arms"][arm]
        apart = distinguishable_from_null(e)
        rows.append({
            "arm": arm_label(arm),
            "judge's gain vs SFT [95% CI]": _with_ci(e, "gold_gain_vs_sft", "+.3f"),
            "tax vs bf16 [95% CI]": _with_ci(e, "tax_vs_bf16", "+.0f", 100.0, "%"),
            "gain − bf16's [95% CI]": _with_ci(e, "gain_diff_vs_bf16", "+.3f"),
            "apart from null?": MISSING if apart is None or arm in ("bf16", ppo.get("null_arm")) else (
                "yes" if apart else "no"),
            "KL": _cell(e, "kl_mean", ".2f"),
            "ends with EOS": _cell(e, "eos_share", ".0%"),
            "win rate vs SFT": _cell(e, "win_rate_vs_sft", ".0%"),
            "time / seed (s)": _cell(e, "train_seconds_mean", ".0f"),
            "status": _status(e),
        })
    return pd.DataFrame(rows)


def rm_table(rm: dict) -> pd.DataFrame:
    """Reward models side by side: accuracy with its 95% CI, per category, agreement and McNemar vs bf16, costs."""
    categories = sorted({c for e in rm["arms"].values() if _done(e) for c in (e.get("by_category") or {})})
    rows = []
    for arm in _arms(rm):
        e = rm["arms"][arm]
        row = {"reward model": arm_label(arm), "accuracy [95% CI]": _with_ci(e, "accuracy", ".2f")}
        for c in categories:
            cat = (e.get("by_category") or {}).get(c) if _done(e) else None
            row[c.replace("_", "-")] = "failed" if not _done(e) else MISSING if cat is None else \
                f"{cat['accuracy']:.2f} [{cat['accuracy_ci95'][0]:.2f}, {cat['accuracy_ci95'][1]:.2f}]".replace(
                    " ", "\u00a0")
        mc = _value(e, "mcnemar_vs_bf16")
        row |= {"agreement w/ bf16": _cell(e, "agreement_with_bf16", ".3f"),
                "McNemar p vs bf16": MISSING if not mc else f"{mc['p_value']:.2f}",
                "footprint (MiB)": _cell(e, "footprint_bytes", ".2f", MIB),
                "train (s)": _cell(e, "train_seconds", ".0f"),
                "CPU scoring (pairs/s)": _cell(e, "throughput_pairs_per_s", ".0f"),
                "status": _status(e)}
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- draw_all
RM_FIGURES = {"rm_accuracy": plot_rm_accuracy, "rm_costs": plot_rm_costs}
PPO_FIGURES = {"ppo_gold_gain": plot_gold_gain, "ppo_tax": plot_tax, "ppo_frontier": plot_frontier,
               "ppo_training_curves": plot_training_curves, "ppo_time_memory": plot_time_memory,
               "ppo_cross_matrix": plot_cross_matrix}


def load_results(results_dir: str | os.PathLike) -> tuple[dict | None, dict | None]:
    """(rm, ppo) results read from results_dir and validated; None for a file that does not exist."""
    results_dir = Path(results_dir)
    loaded = {}
    for kind in ("rm", "ppo"):
        path = results_dir / FILE_NAMES[kind]
        loaded[kind] = validate_file(path, kind) if path.exists() else None
    if loaded["rm"] is None and loaded["ppo"] is None:
        raise FileNotFoundError(f"neither {results_dir / FILE_NAMES['rm']} nor {results_dir / FILE_NAMES['ppo']} "
                                "exists: run 03_Reward_Modeling and/or 04_PPO_Alignment first")
    return loaded["rm"], loaded["ppo"]


def draw_all(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, list[Path]]:
    """Redraw every figure the result files in results_dir allow; return {figure name: [png, pdf]}.

    Figures go to out_dir (default results_dir/figures). A missing file only skips its figures.
    """
    rm, ppo = load_results(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / "figures"
    figures = {}
    if rm is not None:
        figures |= {name: lambda f=f: f(rm) for name, f in RM_FIGURES.items()}
    if ppo is not None:
        figures |= {name: lambda f=f: f(ppo) for name, f in PPO_FIGURES.items()}
    if rm is not None and ppo is not None:
        figures["rm_vs_ppo"] = lambda: plot_rm_vs_ppo(rm, ppo)
    return {name: save_figure(draw(), out_dir, name) for name, draw in figures.items()}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tinyrlhf.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="folder holding rm_results.json / ppo_experiment_results.json")
    parser.add_argument("out_dir", type=Path, nargs="?", help="where figures go (default: RESULTS_DIR/figures)")
    args = parser.parse_args(argv)
    try:
        written = draw_all(args.results_dir, args.out_dir)
    except (FileNotFoundError, ValueError) as e:  # missing files, invalid JSON, SchemaError
        parser.exit(1, f"error: {e}\n")
    for name, paths in written.items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
