"""Figures and tables of the experiment, drawn from the result JSON files alone.

Everything here reads the dicts stored in ``results/rm_results.json``, ``results/bon_results.json`` and
``results/ppo_experiment_results.json``
(never live models or trainers), so a paper's figures can be redrawn from those files on any machine:

    python -m tinyrlhf.plots results/ [out_dir] [--style column|page]   # or: draw_all("results", "paper/figures")

Functions return ``matplotlib.figure.Figure`` objects that are not registered with pyplot: nothing global is
touched and they never pile up in pyplot's figure manager. A notebook shows them with ``display(fig)`` or as a
cell's last expression once the inline backend is active (``%matplotlib inline``, or any import of pyplot).
One colour per precision everywhere (PRECISION_COLORS). A failed precision is drawn as an annotated gap
("failed: reason"), never an exception.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

# Headless runs (CLI, CI) get Agg; a backend someone chose (Jupyter's inline backend sets MPLBACKEND) is kept.
if matplotlib.get_backend(auto_select=False) is None:
    matplotlib.use("Agg")

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from .results import atomic_file
from .schema import FILE_NAMES, validate_file

# Okabe-Ito's palette (Okabe & Ito 2008), all of it: its 7 hues for the 7 arms, its black for the judge; the SFT
# reference is a neutral grey. Distinguishable under the common colour-vision deficiencies.
PRECISION_COLORS = {"bf16": "#0072B2", "int8": "#009E73", "int4": "#D55E00", "null": "#CC79A7", "noisy": "#E69F00",
                    "served-int8": "#56B4E9", "served-int4": "#F0E442", "judge": "#000000",
                    "same-recipe-judge": "#000000", "sft": "#999999"}  # a judge is black, whichever it is
# the canonical order of arms in every figure and table
ARMS = ("bf16", "int8", "int4", "null", "noisy", "served-int8", "served-int4", "judge", "same-recipe-judge")
JUDGE_ARMS = ("judge", "same-recipe-judge")  # reward models that judge: not arms of the comparison
ARM_LABELS = {"null": "null (bf16, other seed)", "noisy": "noisy (bf16, flipped labels)",
              "served-int8": "int8 served (bf16-trained)", "served-int4": "int4 served (bf16-trained)",
              "judge": "heldout judge", "same-recipe-judge": "same-recipe judge (fresh pairs)"}
MIB = 2**20
MISSING = "—"
DONE = ("ok", "partial")  # statuses whose aggregate metrics exist ("partial": some seeds failed)

# Embed TrueType (Type 42) fonts rather than Type 3: journals require it and the text stays editable.
_PAPER_RC = {"pdf.fonttype": 42, "ps.fonttype": 42}


@dataclass(frozen=True)
class Style:
    """How figures are laid out. `notebook`: each figure at its own width, with titles (04 and the CLI's default).
    `column` / `page`: a paper's single column (3.3 in) or full width (7 in), every text at least `min_font` points
    at that width, no titles (the caption says it), short arm names, panels wrapped into rows, legends below."""
    name: str
    width: float | None = None  # inches; None: the figure's own width
    row_height: float = 0.0  # inches per row of panels
    max_columns: int = 99  # panels per row
    min_font: float = 0.0  # points
    titles: bool = True
    short_labels: bool = False


STYLES = {"notebook": Style("notebook"),
          "column": Style("column", width=3.3, row_height=2.1, max_columns=2, min_font=8, titles=False,
                          short_labels=True),
          "page": Style("page", width=7.0, row_height=2.6, max_columns=4, min_font=8, titles=False,
                        short_labels=True)}
STYLE_HELP = ("notebook: each figure at its own width, with titles (default); column: 3.3 in wide (a paper's single "
              "column), page: 7 in; both with every text at least 8 pt at that width and no titles")
_STYLE: contextvars.ContextVar[Style] = contextvars.ContextVar("tinyrlhf_plot_style", default=STYLES["notebook"])


@contextlib.contextmanager
def style(name: str):
    """Draw (and save) figures inside this block in a style of STYLES: ``with plots.style("column"): ...``."""
    if name not in STYLES:
        raise ValueError(f"unknown figure style {name!r}; choose one of: {', '.join(STYLES)}")
    chosen = STYLES[name]
    # Text sizes rcParams give (ticks, labels, legends) are read when artists are created or drawn: the whole
    # drawing and saving happens inside this context.
    rc = {} if chosen.width is None else {k: chosen.min_font for k in (
        "font.size", "axes.titlesize", "axes.labelsize", "xtick.labelsize", "ytick.labelsize", "legend.fontsize")}
    token = _STYLE.set(chosen)
    try:
        with matplotlib.rc_context(rc):
            yield chosen
    finally:
        _STYLE.reset(token)


def _fs(size: float) -> float:
    """A font size in points, raised to the style's minimum."""
    return max(size, _STYLE.get().min_font)


def _figure(width: float, height: float, panels: int = 1, *, columns: int | None = None,
            min_panel_width: float = 1.5, width_ratios=None, **subplot_kw) -> tuple[Figure, list]:
    """A constrained-layout figure with `panels` axes: in rows of `columns` (default: all in one row) at width x
    height (notebook), or at the style's width wrapped into rows of as many panels as fit at `min_panel_width`
    inches. `width_ratios` repeat in every row."""
    current = _STYLE.get()
    if current.width is None:
        columns = columns or panels
        width_of_row, rows = width, math.ceil(panels / columns)
    else:
        columns = max(1, min(panels, current.max_columns, int(current.width // min_panel_width)))
        rows = math.ceil(panels / columns)
        width_of_row, height = current.width, current.row_height * rows
    fig = Figure(figsize=(width_of_row, height), layout="constrained")
    ratios = None if width_ratios is None else list(width_ratios)[:columns]
    axes = list(fig.subplots(rows, columns, squeeze=False, width_ratios=ratios, **subplot_kw).flat)
    for extra in axes[panels:]:
        extra.remove()
    return fig, axes[:panels]


def _title(ax, text: str, short: str | None = None) -> None:
    """A panel's title; in a paper style only its short form (when the panel needs one to be told apart)."""
    if _STYLE.get().titles:
        ax.set_title(text, fontsize=10)
    elif short:
        ax.set_title(short)


def _ylabel(ax, text: str, short: str) -> None:
    """A y label; its short form in a paper style, where a long one would reach past a short panel."""
    ax.set_ylabel(short if _STYLE.get().short_labels else text)


def _suptitle(fig: Figure, text: str) -> None:
    if _STYLE.get().titles:
        fig.suptitle(text, fontsize=11)


def precision_color(precision: str) -> str:
    """The colour of a precision ("bf16", "int8", "int4") or of the SFT reference ("sft")."""
    try:
        return PRECISION_COLORS[precision]
    except KeyError:
        raise KeyError(f"no colour for {precision!r}; known: {', '.join(PRECISION_COLORS)}") from None


def _text_color(arm: str) -> str:
    """An arm's colour for text: its own, unless too light to read on white (Okabe-Ito's yellow), then near-black."""
    r, g, b = to_rgb(precision_color(arm))
    return precision_color(arm) if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.7 else "0.15"


def _gid(precision: str) -> str:
    """Id of the main artist drawn for a precision, so tests and tools can find it in any figure."""
    return f"precision={precision}"


def save_figure(fig: Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Save `fig` as out_dir/name.png (150 dpi) and out_dir/name.pdf (TrueType fonts), atomically; close it."""
    out_dir = Path(out_dir)
    written = []
    # CreationDate off: the same results give byte-identical PDFs, so figure diffs mean changed numbers.
    formats = {"png": {"dpi": 150}, "pdf": {"metadata": {"CreationDate": None}}}
    # A paper style's figure is saved at exactly its width (its layout keeps everything inside); a notebook
    # figure is cropped to what it draws, as the inline backend shows it.
    bbox = "tight" if _STYLE.get().width is None else None
    with matplotlib.rc_context(_PAPER_RC):
        for fmt, options in formats.items():
            path = out_dir / f"{name}.{fmt}"
            with atomic_file(path, "wb") as f:
                fig.savefig(f, format=fmt, bbox_inches=bbox, **options)
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
    """An arm's name in figures and tables; a paper style uses the short one (its caption explains it)."""
    return arm if _STYLE.get().short_labels else ARM_LABELS.get(arm, arm)


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
            va="center", fontsize=_fs(7), color="0.25", bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})


def _legend_failures(ax, results: dict) -> None:
    """Failed arms get a legend entry in their colour, since a line or scatter plot has no slot for them."""
    for arm in _arms(results):
        entry = results["arms"][arm]
        if not _done(entry):
            ax.plot([], [], ls=":", color=precision_color(arm), label=f"{arm}: failed ({_reason(entry, 50)})")


def _outside_legend(ax, **kw) -> None:
    """A legend where it covers no data: beside the axes, or in a paper style below all panels, in as many columns
    as its longest label allows at the figure's width (the figure grows by the legend's height)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    current = _STYLE.get()
    if current.width is None:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, **kw)
        return
    fig = ax.figure
    em = current.min_font / 72  # inches
    labels = [textwrap.fill(label, int((current.width - 4 * em) / (0.6 * em))) for label in labels]
    lines = [len(line) for label in labels for line in label.splitlines()]
    # as many columns as the longest line allows (0.6 em an average glyph, 3 em its handle and gaps), fewer while
    # the drawn legend is still wider than the figure
    for columns in range(max(1, min(len(labels), int(current.width / ((max(lines) * 0.6 + 3) * em)))), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False, **kw)
        if columns == 1 or legend.get_window_extent(FigureCanvasAgg(fig).get_renderer()).width <= fig.bbox.width:
            break
        legend.remove()
    rows = math.ceil(len(labels) / columns)  # matplotlib fills the columns one after the other
    text_lines = sum(max(label.count("\n") + 1 for label in labels[r::rows]) for r in range(rows))
    fig.set_figheight(fig.get_figheight() + text_lines * 1.4 * em + 0.15)


def _categorical(ax, arms: list[str]) -> None:
    ax.set_xticks(range(len(arms)), [arm_label(a).replace(" (", "\n(") for a in arms])
    for tick, arm in zip(ax.get_xticklabels(), arms):
        tick.set_color(_text_color(arm))
    ax.set_xlim(-0.6, len(arms) - 0.4)
    if _STYLE.get().short_labels and len(arms) > 2:
        ax.tick_params(axis="x", labelrotation=90)
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
                        ha="center", va="bottom" if value >= 0 else "top", fontsize=_fs(7))
    _categorical(ax, arms)


def _seed_runs(entry: dict | None, *, ok_only: bool = True) -> list[dict]:
    seeds = (entry or {}).get("seeds") or []
    return [s for s in seeds if s.get("status") == "ok" or not ok_only]


# ---------------------------------------------------------------------------------------------- reward models
def seed_models(rm: dict, arm: str, *, ok_only: bool = True) -> list[dict]:
    """An arm's reward models, one per reward-model seed, from rm_results.json's `models`."""
    return [m for m in rm.get("models", {}).values() if m.get("arm") == arm and (m.get("status") == "ok" or
                                                                                not ok_only)]


def _strip(ax, rm: dict, arms: list[str], value) -> None:
    """Every seed's reward model as a dot (value(model) on y), the arm's mean as a bar; a failed arm is a gap."""
    for i, arm in enumerate(arms):
        values = [v for m in seed_models(rm, arm) if (v := value(m)) is not None]
        if not values:
            _mark_gap(ax, i, _failure_label(rm["arms"].get(arm)))
            continue
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
        ax.scatter(np.add(i, jitter), values, s=16, color=precision_color(arm), alpha=0.8, gid=_gid(arm), zorder=3)
        ax.hlines(np.mean(values), i - 0.3, i + 0.3, color=precision_color(arm), lw=2)
    _categorical(ax, arms)


def _draw_rm_accuracy(ax, rm: dict, arms: list[str]) -> None:
    _strip(ax, rm, arms, lambda m: m.get("accuracy"))
    ax.axhline(0.5, color="black", ls=":", lw=1, label="chance")
    ax.set_ylim(0, 1.05)
    ax.set_yticks(np.linspace(0, 1, 6))
    _ylabel(ax, "preference accuracy (test pairs)", "accuracy (test pairs)")


def plot_rm_accuracy(rm: dict) -> Figure:
    """Test-set preference accuracy of every reward model (a dot per reward-model seed, a bar at the arm's mean),
    overall and per category of pair, with the chance line: the spread across seeds at a glance."""
    arms = [a for a in _arms(rm) if a not in JUDGE_ARMS]
    categories = sorted({c for m in rm.get("models", {}).values() if m.get("status") == "ok"
                         for c in (m.get("by_category") or {})})
    panels = [("overall", lambda m: m.get("accuracy"))] + [
        (c.replace("_", "-"), lambda m, c=c: (m.get("by_category") or {}).get(c, {}).get("accuracy"))
        for c in categories]
    fig, axes = _figure(2.3 * len(panels) + 0.6, 3.8, len(panels), sharey=True)
    for ax, (title, value) in zip(axes, panels):
        _strip(ax, rm, arms, value)
        ax.axhline(0.5, color="black", ls=":", lw=1)
        ax.set_ylim(0, 1.05)
        _title(ax, title, title)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=90, labelsize=_fs(8))
        if ax.get_subplotspec().is_first_col():
            _ylabel(ax, "preference accuracy (test pairs)", "accuracy (test pairs)")
    seeds = len(rm.get("seeds") or [])
    _suptitle(fig, f"Reward-model accuracy: a dot per reward-model seed ({seeds}), bar at the mean; dotted: chance")
    return fig


def plot_rm_costs(rm: dict) -> Figure:
    """Footprint, training time and scoring throughput per arm (means over its seeds), as small multiples."""
    panels = [("footprint_bytes", MIB, "footprint (MiB)", "{:.2f}"),
              ("train_seconds", 1.0, "training time (s)", "{:.0f}"),
              ("throughput_pairs_per_s", 1.0, "CPU scoring (pairs/s)", "{:.0f}")]
    arms = [a for a in _arms(rm) if a not in JUDGE_ARMS]
    means = {"arms": {arm: (rm["arms"].get(arm) or {}) | {
        key: (float(np.mean(v)) if (v := [m[key] for m in seed_models(rm, arm) if m.get(key) is not None]) else None)
        for key, *_ in panels} for arm in arms}}
    fig, axes = _figure(9.5, 3.6, len(panels))
    for ax, (key, scale, label, fmt) in zip(axes, panels):
        _bars(ax, means, key, arms=arms, scale=scale, label_fmt=fmt)
        _title(ax, label, label)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=90, labelsize=_fs(8))
        ax.margins(y=0.12)
    _suptitle(fig, "Reward-model costs (mean over seeds)")
    return fig


# ------------------------------------------------------------------------------------------------- best-of-n
def _bon_arms(bon: dict) -> list[str]:
    return [a for a in _arms(bon) if a not in JUDGE_ARMS]


def _bon_curve(entry: dict, key: str = "gold_gain_vs_sft"):
    rows = entry.get("by_n") or []
    return ([r["n"] for r in rows], [r.get(key) for r in rows], [r.get(f"{key}_ci95") for r in rows])


def _draw_bon_frontier(ax, bon: dict) -> None:
    d = np.sqrt(bon["kl"])
    for arm in _bon_arms(bon):
        entry = bon["arms"][arm]
        if not _done(entry):
            ax.plot([], [], ls=":", color=precision_color(arm), label=f"{arm_label(arm)}: {_failure_label(entry)}")
            continue
        _, gains, cis = _bon_curve(entry)
        color = precision_color(arm)
        dashed = arm.startswith("served-")
        ax.plot(d, [np.nan if g is None else g for g in gains], marker="o", ms=3, color=color,
                ls="--" if dashed else "-", label=arm_label(arm), gid=_gid(arm))
        lo = [np.nan if c is None else c[0] for c in cis]
        hi = [np.nan if c is None else c[1] for c in cis]
        ax.fill_between(d, lo, hi, color=color, alpha=0.12, lw=0)
    if bon.get("n_star"):
        x = math.sqrt(bon["kl"][bon["ns"].index(bon["n_star"])])
        ax.axvline(x, color="0.4", ls=":", lw=1)
        ax.annotate(f"n = {bon['n_star']}", (x, 1.0), xycoords=("data", "axes fraction"), xytext=(-3, -12),
                    textcoords="offset points", fontsize=_fs(8), color="0.3", ha="right")  # left of the line: never clipped
    ax.axhline(0, color=precision_color("sft"), ls="--", lw=1)
    top = ax.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
    top.set_xticks(d, [str(n) for n in bon["ns"]], fontsize=_fs(7))
    top.set_xlabel("n (best of n)", fontsize=8)
    ax.set_xlabel("d = sqrt(KL_bon), KL_bon = log n − (n−1)/n")
    ax.set_ylabel("gold gain over the SFT policy")


def _draw_rl_frontier(ax, ppo: dict, proxy_ax=None) -> None:
    """Every checkpoint of every run as a point (gold gain against d = sqrt(KL)) and each arm's fitted R(d); the
    proxy's gains on `proxy_ax` when given."""
    for arm in _ppo_arms(ppo):
        front = _value(ppo["arms"][arm], "frontier")
        if not front:
            continue
        color = precision_color(arm)
        points = [p for p in front["points"] if p.get("seed") is not None]
        d = [p["d"] for p in points]
        ax.scatter(d, [p["gold_gain"] for p in points], s=12, color=color, alpha=0.5, gid=_gid(arm))
        if proxy_ax is not None:
            proxy_ax.scatter(d, [np.nan if p["proxy_gain"] is None else p["proxy_gain"] for p in points], s=12,
                             color=color, alpha=0.5)
        fit = front["fit"]
        if fit.get("alpha") is not None and d:
            x = np.linspace(1e-3, max(d) * 1.05, 100)
            ax.plot(x, x * (fit["alpha"] - fit["beta"] * np.log(x)), color=color, lw=1.8,
                    label=f"{arm_label(arm)}: α={fit['alpha']:.2f}, β={fit['beta']:.2f}")
    ax.axhline(0, color=precision_color("sft"), ls="--", lw=1)
    ax.set_xlabel("d = sqrt(KL to the SFT policy)")
    ax.set_ylabel("gold gain over the SFT policy")


def plot_bon_frontier(bon: dict, ppo: dict | None = None) -> Figure:
    """Gao et al.'s Figure 1 for this experiment: best-of-n's gold gain against d = sqrt(KL_bon) for every arm on
    the shared pool (95% bands over reward-model seeds and prompts; dashed: quantized only to serve), and, when the
    PPO results are given, RL's gain against d = sqrt(KL) on the same judge beside it."""
    fig, axes = _figure(10.4 if ppo else 6.6, 4.0, 2 if ppo else 1, min_panel_width=3.0)
    _draw_bon_frontier(axes[0], bon)
    _title(axes[0], f"Best-of-n on one pool ({bon['pool_size']} candidates x {bon['prompts']} prompts)",
           "best-of-n" if ppo else None)
    if ppo:
        _draw_rl_frontier(axes[1], ppo)
        _title(axes[1], "RL (PPO): every checkpoint of every run, R(d) = d(α − β log d)", "PPO")
        _legend_failures(axes[1], ppo)
    _outside_legend(axes[-1] if ppo else axes[0])
    _suptitle(fig, "Gold reward against KL: best-of-n and RL")
    return fig


def plot_bon_proxy_vs_gold(bon: dict) -> Figure:
    """Over-optimisation in best-of-n: each arm's own proxy gain keeps rising with n while the gold gain peaks."""
    fig, (ax,) = _figure(6.6, 3.6)
    d = np.sqrt(bon["kl"])
    for arm in _bon_arms(bon):
        entry = bon["arms"][arm]
        if not _done(entry):
            continue
        _, proxy, _ = _bon_curve(entry, "proxy_gain")
        _, gold, _ = _bon_curve(entry)
        color = precision_color(arm)
        ax.plot(d, [np.nan if v is None else v for v in proxy], color=color, ls=":", lw=1.2)
        ax.plot(d, [np.nan if v is None else v for v in gold], color=color, lw=1.6, label=arm_label(arm))
    ax.plot([], [], color="0.3", ls=":", label="proxy (own reward model)")
    ax.plot([], [], color="0.3", label="gold")
    ax.set_xlabel("d = sqrt(KL_bon)")
    ax.set_ylabel("gain over the pool's mean")
    _title(ax, "Best-of-n: the proxy rises, the gold reward peaks")
    _outside_legend(ax)
    return fig


CONTROL_ARMS = ("null", "noisy")


def _draw_taxes(ax, entries: dict, arms: list[str]) -> None:
    """Each arm's tax (filled square) beside its tax minus the null arm's (hollow), 95% intervals, in percent."""
    for i, arm in enumerate(arms):
        e = entries[arm]
        if _point_with_interval(ax, i - 0.12, arm, e, "tax_vs_bf16", fmt="s", scale=100,
                                missing=e.get("tax_undefined") or "tax: n/a") is None:
            continue
        v, ci = _value(e, "tax_minus_null"), _value(e, "tax_minus_null_ci95")
        if v is not None:
            ax.errorbar(i + 0.12, v * 100, yerr=_yerr(v * 100, None if ci is None else [c * 100 for c in ci]),
                        fmt="o", mfc="white", ms=6, capsize=3, color=precision_color(arm), zorder=3)
    ax.axhline(0, color="black", lw=0.8)
    _categorical(ax, arms)
    ax.set_xlabel("")
    ax.tick_params(axis="x", labelrotation=90, labelsize=_fs(8))


def plot_taxes(bon: dict | None = None, ppo: dict | None = None) -> Figure:
    """Both taxes with 95% intervals: best-of-n at its headline n and PPO, each arm's tax beside its tax minus the null arm's
    (hollow): a tax is resolved when its interval excludes 0, and told apart from reward-model noise when the hollow
    one does. The controls (null, noisy) get their own panel and scale, so that the positive control's large effect
    does not flatten the precisions' intervals. An arm whose tax is undefined (bf16's gain interval does not exclude
    0) says so."""
    methods = []
    if bon:
        methods.append((f"best-of-n at n = {bon.get('n_star')}", f"best-of-n, n = {bon.get('n_star')}",
                        {a: (bon["arms"][a].get("at_n_star") or {}) | {"status": bon["arms"][a].get("status")}
                         for a in _bon_arms(bon)}))
    if ppo:
        methods.append(("PPO", "PPO", {a: ppo["arms"][a] for a in _ppo_arms(ppo)}))
    panels = []  # (title, short title, entries, arms, y label)
    for title, short, entries in methods:
        precisions = [a for a in entries if a != "bf16" and a not in CONTROL_ARMS]
        controls = [a for a in entries if a in CONTROL_ARMS]
        paper = _STYLE.get().width is not None
        panels.append((title, short, entries, precisions,
                       "tax (% of bf16's gain)" if paper else "tax: % of bf16's gold gain lost"))
        if controls:
            panels.append((f"{title}: controls", "controls", entries, controls, "controls' tax (%)"))
    with_controls = len(panels) > len(methods)
    ratios = [3, 2] * len(methods) if with_controls else None
    if with_controls:  # a row per method: its precisions, then its controls
        fig, axes = _figure(6.6, 3.4 * len(methods), len(panels), columns=2, min_panel_width=1.3, width_ratios=ratios)
    else:
        fig, axes = _figure(4.6 * len(panels) + 0.6, 4.2, len(panels), min_panel_width=1.3)
    for ax, (title, short, entries, arms, ylabel) in zip(axes, panels):
        _draw_taxes(ax, entries, arms)
        _title(ax, title, short)
        ax.set_ylabel(ylabel)
    axes[0].errorbar([], [], fmt="s", color="0.3", label="tax vs bf16")
    axes[0].errorbar([], [], fmt="o", mfc="white", color="0.3", label="tax − null arm's tax")
    if _STYLE.get().width is None:
        axes[0].legend(fontsize=8, frameon=False)
    else:
        _outside_legend(axes[0])
    _suptitle(fig, "The quantization tax, 95% CI over reward-model seeds and prompts")
    return fig


SWEEP_COLOR = "0.25"  # the bits sweep's line: near-black, apart from every arm's hue
# the bitsandbytes arms beside the sweep, at their widths, each nudged aside so that no interval hides another
NEIGHBOUR_NAMES = {"int8": "int8", "int4": "NF4"}
BITS_NEIGHBOURS = (("int8", 8, 0.18, "s"), ("served-int8", 8, -0.18, "D"), ("int4", 4, 0.18, "s"),
                   ("served-int4", 4, -0.18, "D"))


def plot_tax_vs_bits(bon: dict) -> Figure:
    """Where quantization starts to cost: best-of-n's tax at the headline n against the backbone's weight width,
    bf16-trained models served at k bits (torchao, the line), with 95% intervals, beside the arms at bitsandbytes'
    int8 and NF4 (trained: squares; served: diamonds). The title gives the trend per bit removed and the onset."""
    sweep = bon.get("bits") or {}
    fig, (ax,) = _figure(6.4, 4.4)
    rows = [r for r in sweep.get("rows") or [] if r.get("tax_vs_bf16") is not None]
    if rows:
        x = [r["bits"] for r in rows]
        y = [100 * r["tax_vs_bf16"] for r in rows]
        err = np.array([_yerr(v, r.get("tax_vs_bf16_ci95") and [100 * c for c in r["tax_vs_bf16_ci95"]]) or [[0.0], [0.0]]
                        for v, r in zip(y, rows)])[:, :, 0].T
        ax.errorbar(x, y, yerr=err, fmt="o-", ms=6, capsize=4, color=SWEEP_COLOR, zorder=3,
                    label=f"bf16-trained, served at k bits (torchao, {sweep.get('group')} per scale)")
    for arm, bits, dx, marker in BITS_NEIGHBOURS:
        e = (bon["arms"].get(arm) or {}).get("at_n_star") or {}
        if e.get("tax_vs_bf16") is not None:
            ci = e.get("tax_vs_bf16_ci95")
            tax = 100 * e["tax_vs_bf16"]
            ax.errorbar(bits + dx, tax, yerr=_yerr(tax, ci and [100 * c for c in ci]), fmt=marker, ms=6, capsize=3, color=precision_color(arm), gid=_gid(arm), zorder=3,
                        label=f"{NEIGHBOUR_NAMES[arm.removeprefix('served-')]} "
                              f"{'served' if arm.startswith('served') else 'trained'} (bitsandbytes)")
    ax.axhline(0, color="black", lw=0.8)
    widths = sorted({r["bits"] for r in sweep.get("rows") or []} | {8, 4}, reverse=True)
    ax.set_xticks(widths)
    ax.set_xlim(max(widths) + 0.6, min(widths) - 0.6)  # fewer bits to the right
    ax.set_xlabel("weight bits of the served backbone")
    _ylabel(ax, "tax: % of bf16's gold gain lost", "tax (%)")
    _title(ax, f"Best-of-n at n = {bon.get('n_star')}: the tax against weight bits\n"
               + textwrap.fill(bits_summary(sweep), 90))
    if _STYLE.get().width is None:  # below the axes: five long labels beside them would double the figure's width
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, fontsize=8, frameon=False)
    else:
        _outside_legend(ax)
    return fig


def bits_summary(sweep: dict) -> str:
    """The sweep's trend and onset in one line (a figure's title, a table's caption)."""
    return f"{trend_words(sweep, sign_flip=False)}; {onset_words(sweep)}"


def trend_words(sweep: dict, sign_flip: bool = True) -> str:
    """The tax's trend against the width: per halving, its interval, and (optionally) the per-seed slopes' sign-flip
    test, which is conditional on the prompts every seed shares."""
    trend = sweep.get("trend") or {}
    slope, ci = trend.get("per_halving"), trend.get("per_halving_ci95")
    if slope is None:
        return "trend: none (bf16's gain not resolved at this n)"
    text = f"trend {100 * slope:+.1f} points per halving of the width" + (
        f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
    if sign_flip and trend.get("sign_flip_p") is not None:
        text += f" (sign-flip p = {trend['sign_flip_p']:.3f} over the per-seed slopes, conditional on these prompts)"
    return text


def onset_words(sweep: dict) -> str:
    """Where the tax begins, as fixed-sequence testing from the fewest bits up found it: the widths resolved from 0,
    and the one where testing stopped (wider widths were not tested, whatever their intervals say)."""
    widths = sorted(r["bits"] for r in sweep.get("rows") or [])
    onset, stopped = sweep.get("onset_bits"), sweep.get("stopped_at")
    resolved = [w for w in widths if onset is not None and w <= onset]
    if not widths:
        return "no widths served"
    if onset is None:
        return (f"the narrowest width ({widths[0]} bits) is not resolved from 0: no onset "
                "(testing stops there; wider widths are not tested)")
    text = f"the tax is resolved from 0 at {', '.join(map(str, resolved))} bits"
    return text + (f" and not at {stopped} bits, where testing stopped" + (
        " (wider widths not tested)" if stopped != widths[-1] else "") if stopped is not None else
        " (every width served)")


def bits_table(bon: dict) -> pd.DataFrame:
    """The bits sweep at the headline n: one row per width, the bitsandbytes arms beside their widths."""
    rows = []
    for r in (bon.get("bits") or {}).get("rows") or []:
        rows.append({"served at": f"{r['bits']} bits (torchao)",
                     "gold gain [95% CI]": _with_ci(r, "gold_gain_vs_sft", "+.3f"),
                     "tax vs bf16 [95% CI]": _with_ci(r, "tax_vs_bf16", "+.1f", 100.0, "%")
                     if r.get("tax_vs_bf16") is not None else (r.get("tax_undefined") or MISSING),
                     "gain − bf16's [95% CI]": _with_ci(r, "gain_diff_vs_bf16", "+.3f"),
                     "per seed (%)": ", ".join(_fmt(None if t is None else 100 * t, "+.0f")
                                               for t in r.get("per_seed_tax") or []),
                     "sign-flip p": _fmt(r.get("sign_flip_p"), ".3f")})
    return pd.DataFrame(rows)


def bon_table(bon: dict) -> pd.DataFrame:
    """Best-of-n's headline at its headline n: one row per arm."""
    rows = []
    for arm in _bon_arms(bon):
        e = bon["arms"][arm]
        star = (e.get("at_n_star") or {}) | {"status": e.get("status")}
        apart = distinguishable_from_null(star)
        rows.append({
            "arm": arm_label(arm),
            f"gold gain at n = {bon.get('n_star')} [95% CI]": _with_ci(star, "gold_gain_vs_sft", "+.3f"),
            "tax vs bf16 [95% CI]": _with_ci(star, "tax_vs_bf16", "+.1f", 100.0, "%")
            if star.get("tax_vs_bf16") is not None or arm == "bf16" else (star.get("tax_undefined") or MISSING),
            "gain − bf16's [95% CI]": _with_ci(star, "gain_diff_vs_bf16", "+.3f"),
            "tax − null's [95% CI]": _with_ci(star, "tax_minus_null", "+.1f", 100.0, "%")
            if star.get("tax_minus_null") is not None else MISSING,
            "apart from null?": MISSING if apart is None or arm in ("bf16", bon.get("null_arm")) else (
                "yes" if apart else "no"),
            "seeds": f"{len(e.get('seeds_ok') or [])}",
            "status": _status(e),
        })
    return pd.DataFrame(rows)


def bon_by_n_table(bon: dict, arms=None) -> pd.DataFrame:
    """Every n: each arm's gold gain and tax (the ratio only where bf16's gain interval excludes 0)."""
    rows = []
    for k, n in enumerate(bon["ns"]):
        row = {"n": n, "KL_bon": f"{bon['kl'][k]:.2f}"}
        for arm in arms or _bon_arms(bon):
            r = (bon["arms"][arm].get("by_n") or [{}] * len(bon["ns"]))[k]
            row[f"{arm} gain"] = _fmt(r.get("gold_gain_vs_sft"), "+.3f")
            if arm != "bf16":
                row[f"{arm} tax"] = "undefined" if r.get("tax_undefined") else _fmt(
                    None if r.get("tax_vs_bf16") is None else 100 * r["tax_vs_bf16"], "+.1f") + "%"
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------- PPO
def _ppo_arms(ppo: dict) -> list[str]:
    return [a for a in _arms(ppo) if a not in JUDGE_ARMS]


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
    fig, (ax,) = _figure(5.2, 3.6)
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
    _ylabel(ax, "judge's reward gain over SFT", "gain over SFT")
    _title(ax, f"Gain over SFT under the judge ({ppo['judge']['kind']}), 95% CI")
    _outside_legend(ax)
    return fig


def finished_runs(ppo: dict) -> list[dict]:
    """The rows plot_runs_so_far draws, from a finished (or reused) PPO result."""
    rows = [{"policy": "sft", "status": "ok", "judge_mean": ppo["sft"]["judge_mean"]}]
    return rows + [{"policy": arm, "status": s["status"], "judge_mean": s.get("judge_mean")}
                   for arm, entry in ppo["arms"].items() for s in entry.get("seeds", [])]


def plot_runs_so_far(finished: list[dict], arms: list[str], runs: int) -> Figure:
    """04 while PPO trains: the judge's reward of every finished run per arm (the SFT policy's as a line once it is
    evaluated), out of `runs`. No intervals: those need every run (the stage's result, at its end)."""
    fig, (ax,) = _figure(5.2, 3.2)
    done = [r for r in finished if r["policy"] != "sft" and r["status"] == "ok"]
    for i, arm in enumerate(arms):
        values = [r["judge_mean"] for r in done if r["policy"] == arm]
        jitter = np.linspace(-0.1, 0.1, len(values)) if len(values) > 1 else [0.0] * len(values)
        ax.scatter(np.add(i, jitter), values, s=18, color=precision_color(arm), zorder=2)
    sft = next((r["judge_mean"] for r in finished if r["policy"] == "sft" and r["status"] == "ok"), None)
    if sft is not None:
        ax.axhline(sft, color=precision_color("sft"), ls="--", lw=1.2, label=f"SFT policy ({sft:.3f})")
        _outside_legend(ax)
    _categorical(ax, arms)
    ax.set_ylabel("judge's mean reward")
    failed = sum(r["status"] != "ok" for r in finished if r["policy"] != "sft")
    _title(ax, f"{len(done)} of {runs} PPO runs finished" + (f", {failed} failed" if failed else ""))
    return fig


def plot_tax(ppo: dict) -> Figure:
    """PPO's tax per arm with its 95% interval, beside its tax minus the null arm's (plot_taxes' PPO panel)."""
    return plot_taxes(None, ppo)


def plot_frontier(ppo: dict) -> Figure:
    """Gao et al.'s frontier: judge and proxy gain over SFT against d = sqrt(KL) at every checkpoint of every
    run, and R(d) = d (alpha - beta log d) fitted to the judge's points."""
    fig, (ax_gold, ax_proxy) = _figure(10, 3.8, 2, min_panel_width=3.0, sharex=True)
    _draw_rl_frontier(ax_gold, ppo, proxy_ax=ax_proxy)
    _legend_failures(ax_gold, ppo)
    ax_gold.set_ylabel("gain over SFT, judge")
    ax_proxy.axhline(0, color=precision_color("sft"), ls="--", lw=1)
    ax_proxy.set_xlabel("d = sqrt(KL to the SFT policy)")
    _ylabel(ax_proxy, "gain over SFT, own reward model (proxy)", "proxy's gain over SFT")
    _title(ax_gold, "Judge: points and R(d) = d(α − β log d)", "judge")
    _title(ax_proxy, "Proxy: each arm's own reward model", "proxy")
    _outside_legend(ax_gold)
    _suptitle(fig, "Reward against KL along PPO (every checkpoint of every seed)")
    return fig


def _history_frame(seed: dict) -> pd.DataFrame:
    return pd.DataFrame(seed.get("history") or [], columns=["step", "reward", "kl"]).astype(float)


def plot_training_curves(ppo: dict) -> Figure:
    """Training reward (the arm's own reward model) and KL per PPO update: mean over seeds, thin per seed."""
    fig, axes = _figure(10, 3.4, 2, min_panel_width=3.0)
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
        _title(ax, labels[metric], labels[metric])
    _outside_legend(axes[1])
    _suptitle(fig, "PPO training curves (thin: individual seeds)")
    return fig


def plot_time_memory(ppo: dict) -> Figure:
    """PPO training time (mean over seeds) and peak memory (max over seeds) per arm."""
    fig, (ax_time, ax_mem) = _figure(8, 3.2, 2)
    arms = _ppo_arms(ppo)
    _bars(ax_time, ppo, "train_seconds_mean", arms=arms, label_fmt="{:.0f}")
    _bars(ax_mem, ppo, "peak_memory_bytes_max", arms=arms, scale=MIB, label_fmt="{:.0f}")
    _title(ax_time, "training time per seed (s)", "time per seed (s)")
    _title(ax_mem, "peak memory (MiB)", "peak memory (MiB)")
    for ax in (ax_time, ax_mem):
        ax.margins(y=0.12)
    _suptitle(fig, "PPO cost per arm")
    return fig


def plot_rm_vs_ppo(rm: dict, ppo: dict) -> Figure:
    """Does reward-model accuracy predict alignment? Accuracy beside the judge's gain over SFT, per arm."""
    fig, (ax_rm, ax_gain) = _figure(9, 3.6, 2)
    arms = [a for a in _arms(rm, ppo) if a not in JUDGE_ARMS]
    _draw_rm_accuracy(ax_rm, rm, arms)
    _title(ax_rm, "reward-model accuracy (95% CI)", "reward-model accuracy")
    _bars(ax_gain, ppo, "gold_gain_vs_sft", arms=arms, interval_key="gold_gain_vs_sft_ci95")
    ax_gain.axhline(0, color=precision_color("sft"), ls="--", lw=1)
    ax_gain.margins(y=0.2)
    _ylabel(ax_gain, "judge's gain over SFT", "gain over SFT")
    _title(ax_gain, "PPO gain over SFT (95% CI)", "PPO gain over SFT")
    return fig


def plot_cross_matrix(ppo: dict) -> Figure:
    """Mean reward of each policy (rows) under the judge and each arm's reward model (columns)."""
    m = ppo["cross_matrix"]
    values = np.array([[np.nan if v is None else v for v in row] for row in m["mean_reward"]], dtype=float)
    fig, (ax,) = _figure(1.3 * len(m["judges"]) + 2.6, 0.55 * len(m["policies"]) + 1.6)
    paper = _STYLE.get().width is not None
    if paper:  # a row per policy, two lines of 8-point text high, and the rotated column names
        fig.set_figheight(0.3 * len(m["policies"]) + 1.3)
    # Each column on its own scale: the judge and the reward models do not share units.
    shown = (values - np.nanmin(values, 0)) / np.where(np.ptp(np.nan_to_num(values), 0) > 0,
                                                        np.ptp(np.nan_to_num(values), 0), 1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")  # perceptually uniform, CVD-safe
    ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, aspect="auto", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(values):
        dark = np.isfinite(v) and shown[r, c] < 0.6
        ax.text(c, r, MISSING if not np.isfinite(v) else f"{v:.{1 if paper else 2}f}", ha="center", va="center",
                fontsize=_fs(7) if paper else 9,
                color="white" if dark else "black")
    ax.set_xticks(range(len(m["judges"])), [("judge" if j == "judge" else f"{j} RM") for j in m["judges"]])
    ax.set_yticks(range(len(m["policies"])),
                  ["SFT policy" if p == "sft" else f"PPO vs {arm_label(p)}" for p in m["policies"]])
    for tick, name in [*zip(ax.get_xticklabels(), m["judges"]), *zip(ax.get_yticklabels(), m["policies"])]:
        if name in PRECISION_COLORS:
            tick.set_color(_text_color(name))
    if paper:
        ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("scored by (colour: rank within each column)")
    _title(ax, "Every policy under the judge and every reward model")
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
        return f"failed: {_reason(entry, 120)}"
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
    """Reward models side by side, one row per arm over its seeds: accuracy (mean, range), per category (mean, the
    weakest seed), the share of seeds above chance in every category, agreement with the same seed's bf16 model,
    costs."""
    categories = sorted({c for e in rm["arms"].values() if _done(e) for c in (e.get("by_category") or {})})
    rows = []
    for arm in _arms(rm):
        e = rm["arms"][arm]
        models = seed_models(rm, arm)
        row = {"reward model": arm_label(arm), "seeds": f"{len(models)}/{len(e.get('seeds') or [])}",
               "accuracy: mean [min, max]": "failed" if not _done(e) else
               f"{e['accuracy_mean']:.2f} [{e['accuracy_min']:.2f}, {e['accuracy_max']:.2f}]".replace(" ", "\u00a0")}
        for c in categories:
            cat = (e.get("by_category") or {}).get(c) if _done(e) else None
            row[f"{c.replace('_', '-')}: mean (min)"] = "failed" if not _done(e) else MISSING if cat is None else \
                f"{cat['mean']:.2f} ({cat['min']:.2f})".replace(" ", "\u00a0")
        stopped = [m["steps"] for m in models if (m.get("steps") or {}).get("early_stopping")]
        if stopped:  # trained to a plateau: each seed's kept step of those it trained (rm.early_stopping)
            row["steps kept / trained"] = ", ".join(f"{s['kept']}/{s['trained']}" for s in stopped)
        agreement = [m["agreement_with_bf16"] for m in models if m.get("agreement_with_bf16") is not None]
        row |= {"above chance, every category": _cell(e, "above_chance_share", ".0%"),
                "agreement w/ bf16 (same seed)": _fmt(float(np.mean(agreement)) if agreement else None, ".3f"),
                "footprint (MiB)": _cell(e, "footprint_bytes", ".2f", MIB),
                "train (s)": _cell(e, "train_seconds_mean", ".0f"),
                "status": f"partial ({len(models)}/{len(e['seeds'])} seeds)" if e.get("status") == "partial"
                else _status(e)}
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- draw_all
RM_FIGURES = {"rm_accuracy": plot_rm_accuracy, "rm_costs": plot_rm_costs}
BON_FIGURES = {"bon_frontier": plot_bon_frontier, "bon_proxy_vs_gold": plot_bon_proxy_vs_gold,
               "bon_tax": lambda bon: plot_taxes(bon)}
PPO_FIGURES = {"ppo_gold_gain": plot_gold_gain, "ppo_tax": plot_tax, "ppo_frontier": plot_frontier,
               "ppo_training_curves": plot_training_curves, "ppo_time_memory": plot_time_memory,
               "ppo_cross_matrix": plot_cross_matrix}


def load_results(results_dir: str | os.PathLike) -> dict[str, dict | None]:
    """{"rm", "bon", "ppo"}: the results read from results_dir and validated; None for a file that does not
    exist."""
    results_dir = Path(results_dir)
    loaded = {}
    for kind in ("rm", "bon", "ppo"):
        path = results_dir / FILE_NAMES[kind]
        loaded[kind] = validate_file(path, kind) if path.exists() else None
    if all(v is None for v in loaded.values()):
        raise FileNotFoundError(f"none of {', '.join(FILE_NAMES[k] for k in loaded)} exists in {results_dir}: run "
                                "03_Reward_Modeling and/or 04_PPO_Alignment first")
    return loaded


def figure_makers(loaded: dict[str, dict | None]) -> dict[str, Callable[[], Figure]]:
    """{figure name: a function drawing it} for every figure the loaded results (load_results) allow."""
    rm, bon, ppo = loaded["rm"], loaded["bon"], loaded["ppo"]
    figures = {}
    if rm is not None:
        figures |= {name: lambda f=f: f(rm) for name, f in RM_FIGURES.items()}
    if bon is not None:
        figures |= {name: lambda f=f: f(bon) for name, f in BON_FIGURES.items()}
    if ppo is not None:
        figures |= {name: lambda f=f: f(ppo) for name, f in PPO_FIGURES.items()}
    if rm is not None and ppo is not None:
        figures["rm_vs_ppo"] = lambda: plot_rm_vs_ppo(rm, ppo)
    if bon is not None and (bon.get("bits") or {}).get("rows"):
        figures["bon_tax_vs_bits"] = lambda: plot_tax_vs_bits(bon)
    if bon is not None and ppo is not None:  # Gao et al.'s Figure 1, and both taxes side by side
        figures["frontiers"] = lambda: plot_bon_frontier(bon, ppo)
        figures["taxes"] = lambda: plot_taxes(bon, ppo)
    return figures


def draw_all(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
             style_name: str = "notebook") -> dict[str, list[Path]]:
    """Redraw every figure the result files in results_dir allow, in a style of STYLES; return {figure name:
    [png, pdf]}.

    Figures go to out_dir (default results_dir/figures). A missing file only skips its figures.
    """
    loaded = load_results(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / "figures"
    with style(style_name):
        return {name: save_figure(draw(), out_dir, name) for name, draw in figure_makers(loaded).items()}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tinyrlhf.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="folder holding rm_results.json, bon_results.json and/or "
                                                       "ppo_experiment_results.json")
    parser.add_argument("out_dir", type=Path, nargs="?", help="where figures go (default: RESULTS_DIR/figures)")
    parser.add_argument("--style", choices=list(STYLES), default="notebook", help=STYLE_HELP)
    args = parser.parse_args(argv)
    try:
        written = draw_all(args.results_dir, args.out_dir, args.style)
    except (FileNotFoundError, ValueError) as e:  # missing files, invalid JSON, SchemaError
        parser.exit(1, f"error: {e}\n")
    for name, paths in written.items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
