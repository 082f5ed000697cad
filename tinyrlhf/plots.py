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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .config import PRECISIONS  # noqa: E402
from .results import atomic_file  # noqa: E402
from .schema import FILE_NAMES, validate_file  # noqa: E402

# Okabe-Ito palette: distinguishable under the common colour-vision deficiencies and in greyscale print.
PRECISION_COLORS = {"bf16": "#0072B2", "int8": "#009E73", "int4": "#D55E00", "sft": "#999999"}
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
def _precisions(*results: dict) -> list[str]:
    """Precisions present in any of the results, in the canonical order."""
    present = set().union(*(r["precisions"] for r in results))
    return [p for p in PRECISIONS if p in present]


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
    """Failed precisions get a legend entry in their colour, since a line or scatter plot has no slot for them."""
    for p in _precisions(results):
        entry = results["precisions"][p]
        if not _done(entry):
            ax.plot([], [], ls=":", color=precision_color(p), label=f"{p}: failed ({_reason(entry, 50)})")


def _categorical(ax, precisions: list[str]) -> None:
    ax.set_xticks(range(len(precisions)), precisions)
    for tick, p in zip(ax.get_xticklabels(), precisions):
        tick.set_color(precision_color(p))
    ax.set_xlim(-0.6, len(precisions) - 0.4)
    ax.set_xlabel("reward-model precision")


def _yerr(value: float, interval) -> list[list[float]] | None:
    """Asymmetric error bar from a [low, high] interval (clipped: a bootstrap CI may miss its point estimate)."""
    if interval is None or None in interval:
        return None
    low, high = interval
    return [[max(value - low, 0.0)], [max(high - value, 0.0)]]


def _bars(ax, results: dict, key: str, *, precisions: list[str], scale: float = 1.0, interval_key=None,
          interval_offset: float = 0.0, label_fmt: str | None = None) -> None:
    """One bar per precision; failed precisions are annotated gaps and a missing value says so.
    The error bar is the entry's `interval_key` interval, minus `interval_offset`."""
    for i, p in enumerate(precisions):
        entry = results["precisions"].get(p)
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
            interval = [(b - interval_offset) / scale for b in interval]
        ax.bar(i, value, width=0.6, color=precision_color(p), yerr=_yerr(value, interval), capsize=4,
               gid=_gid(p), error_kw={"elinewidth": 1})
        if label_fmt:
            ax.annotate(label_fmt.format(value), (i, value), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom" if value >= 0 else "top", fontsize=7)
    _categorical(ax, precisions)


def _seed_runs(entry: dict | None, *, ok_only: bool = True) -> list[dict]:
    seeds = (entry or {}).get("seeds") or []
    return [s for s in seeds if s.get("status") == "ok" or not ok_only]


# ---------------------------------------------------------------------------------------------- reward models
def _draw_rm_accuracy(ax, rm: dict, precisions: list[str]) -> None:
    _bars(ax, rm, "accuracy", precisions=precisions, interval_key="accuracy_ci95")
    ax.axhline(0.5, color="black", ls=":", lw=1, label="chance")
    # Head room above 1.0 keeps the legend clear of bars and error bars whatever the accuracies are.
    ax.set_ylim(0, 1.15)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("preference accuracy (test pairs)")
    ax.legend(loc="upper left", fontsize=8, frameon=False)


def plot_rm_accuracy(rm: dict) -> Figure:
    """Test-set preference accuracy per reward-model precision, with 95% CI error bars and the chance line."""
    fig = Figure(figsize=(4.2, 3.4), layout="constrained")
    ax = fig.add_subplot()
    _draw_rm_accuracy(ax, rm, _precisions(rm))
    n = {e.get("n_test_pairs") for e in rm["precisions"].values() if _done(e)} - {None}
    ax.set_title("Reward-model accuracy (95% CI)" + (f", n = {n.pop()} pairs" if len(n) == 1 else ""), fontsize=10)
    return fig


def plot_rm_costs(rm: dict) -> Figure:
    """Footprint, training time and scoring throughput per precision, as small multiples."""
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    panels = [("footprint_bytes", MIB, "footprint (MiB)", "{:.2f}"),
              ("train_seconds", 1.0, "training time (s)", "{:.0f}"),
              ("throughput_pairs_per_s", 1.0, "scoring throughput (pairs/s)", "{:.1f}")]
    precisions = _precisions(rm)
    for ax, (key, scale, label, fmt) in zip(fig.subplots(1, 3), panels):
        _bars(ax, rm, key, precisions=precisions, scale=scale, label_fmt=fmt)
        ax.set_title(label, fontsize=10)
        ax.margins(y=0.12)
    fig.suptitle("Reward-model costs per precision", fontsize=11)
    return fig


# ------------------------------------------------------------------------------------------------------- PPO
def plot_final_reward(ppo: dict) -> Figure:
    """Judged reward of each PPO policy (mean and 95% CI over seeds, seeds as dots), SFT as the reference."""
    fig = Figure(figsize=(4.6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    precisions = _precisions(ppo)
    for i, p in enumerate(precisions):
        entry = ppo["precisions"][p]
        mean = _value(entry, "judged_reward_mean")
        if mean is None:
            _mark_gap(ax, i, _failure_label(entry) if not _done(entry) else "judged reward: n/a")
            continue
        color = precision_color(p)
        ax.errorbar(i, mean, yerr=_yerr(mean, _value(entry, "judged_reward_ci95")), fmt="o", ms=8, capsize=5,
                    color=color, gid=_gid(p), zorder=3)
        seeds = [s["judged_reward_mean"] for s in _seed_runs(entry) if s.get("judged_reward_mean") is not None]
        jitter = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else [0.0] * len(seeds)
        ax.scatter(np.add(i + 0.22, jitter), seeds, s=14, facecolors="none", edgecolors=color, lw=1, zorder=2)
    sft = ppo["sft"]["judged_reward_mean"]
    ax.axhline(sft, color=precision_color("sft"), ls="--", lw=1.5, label=f"SFT policy ({sft:.3f})", gid=_gid("sft"))
    _categorical(ax, precisions)
    ax.set_ylabel(f"judged reward ({ppo['judge']} reward model)")
    ax.set_title("PPO policy reward (mean, 95% CI over seeds)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return fig


def _history_frame(seed: dict) -> pd.DataFrame:
    return pd.DataFrame(seed.get("history") or [], columns=["step", "reward", "kl"]).astype(float)


def plot_training_curves(ppo: dict) -> Figure:
    """Training reward (from the policy's own reward model) and KL per PPO step: mean over seeds, thin per seed."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    labels = {"reward": "training reward (own reward model)", "kl": "KL to the SFT policy"}
    for ax, metric in zip(axes, ("reward", "kl")):
        for p in _precisions(ppo):
            entry = ppo["precisions"][p]
            color = precision_color(p)
            # Seeds that failed midway still show how far they got, but only finished ones enter the mean.
            for seed in _seed_runs(entry, ok_only=False):
                h = _history_frame(seed)
                if len(h):
                    ax.plot(h["step"], h[metric], color=color, lw=0.7, alpha=0.35)
            finished = [_history_frame(s) for s in _seed_runs(entry)]
            finished = [h for h in finished if len(h)]
            if finished:
                mean = pd.concat(finished).groupby("step")[metric].mean()
                ax.plot(mean.index, mean.to_numpy(), color=color, lw=2, label=f"{p} (mean of {len(finished)})",
                        gid=_gid(p))
        _legend_failures(ax, ppo)
        ax.set_xlabel("PPO step")
        ax.set_ylabel(labels[metric])
        ax.set_title(labels[metric], fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("PPO training curves (thin: individual seeds)", fontsize=11)
    return fig


def plot_reward_vs_kl(ppo: dict) -> Figure:
    """The reward/KL trade-off: one point per seed, coloured by precision; the SFT policy sits at KL 0."""
    fig = Figure(figsize=(4.8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for p in _precisions(ppo):
        points = [(s["kl_mean"], s["judged_reward_mean"]) for s in _seed_runs(ppo["precisions"][p])
                  if s.get("kl_mean") is not None and s.get("judged_reward_mean") is not None]
        if points:
            x, y = zip(*points)
            ax.scatter(x, y, s=36, color=precision_color(p), label=p, gid=_gid(p), zorder=3)
    ax.scatter([0.0], [ppo["sft"]["judged_reward_mean"]], marker="*", s=140, color=precision_color("sft"),
               label="SFT", gid=_gid("sft"), zorder=3)
    _legend_failures(ax, ppo)
    ax.set_xlabel("KL to the SFT policy (mean per seed)")
    ax.set_ylabel(f"judged reward ({ppo['judge']} reward model)")
    ax.set_title("Reward vs KL (one point per seed)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_time_memory(ppo: dict) -> Figure:
    """PPO training time (mean over seeds) and peak memory (max over seeds) per precision."""
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax_time, ax_mem = fig.subplots(1, 2)
    precisions = _precisions(ppo)
    _bars(ax_time, ppo, "train_seconds_mean", precisions=precisions, label_fmt="{:.0f}")
    _bars(ax_mem, ppo, "peak_memory_bytes_max", precisions=precisions, scale=MIB, label_fmt="{:.0f}")
    ax_time.set_title("training time per seed (s)", fontsize=10)
    ax_mem.set_title("peak memory (MiB)", fontsize=10)
    for ax in (ax_time, ax_mem):
        ax.margins(y=0.12)
    fig.suptitle("PPO cost per reward-model precision", fontsize=11)
    return fig


def plot_rm_vs_ppo(rm: dict, ppo: dict) -> Figure:
    """Does reward-model accuracy predict alignment? RM accuracy beside the PPO gain over SFT, per precision."""
    fig = Figure(figsize=(8.5, 3.6), layout="constrained")
    ax_rm, ax_gain = fig.subplots(1, 2)
    precisions = _precisions(rm, ppo)
    _draw_rm_accuracy(ax_rm, rm, precisions)
    ax_rm.set_title("reward-model accuracy (95% CI)", fontsize=10)
    # The gain's interval is the judged reward's interval shifted by the SFT mean (a fixed reference).
    _bars(ax_gain, ppo, "gain_vs_sft", precisions=precisions, interval_key="judged_reward_ci95",
          interval_offset=ppo["sft"]["judged_reward_mean"])
    for i, p in enumerate(precisions):
        tax = _value(ppo["precisions"].get(p), "tax_vs_bf16")
        if tax is not None:
            ax_gain.text(i, 0.97, f"tax {tax:+.0%}", transform=ax_gain.get_xaxis_transform(), ha="center",
                         va="top", fontsize=8)
    ax_gain.axhline(0, color=precision_color("sft"), ls="--", lw=1)  # the SFT policy
    ax_gain.margins(y=0.2)
    ax_gain.set_ylabel(f"judged reward gain over SFT ({ppo['judge']} RM)")
    ax_gain.set_title("PPO gain over SFT (95% CI)", fontsize=10)
    return fig


def plot_cross_matrix(ppo: dict) -> Figure:
    """Mean reward of each policy (rows) under each reward model (columns), values written in the cells."""
    m = ppo["cross_matrix"]
    values = np.array([[np.nan if v is None else v for v in row] for row in m["mean_reward"]], dtype=float)
    fig = Figure(figsize=(1.4 * len(m["judges"]) + 2.2, 0.6 * len(m["policies"]) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")  # perceptually uniform, CVD-safe
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for (r, c), v in np.ndenumerate(values):
        # Dark cells of viridis need white text, light ones black.
        dark = np.isfinite(v) and (high == low or (v - low) / (high - low) < 0.6)
        ax.text(c, r, MISSING if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center", fontsize=9,
                color="white" if dark else "black")
    ax.set_xticks(range(len(m["judges"])), m["judges"])
    ax.set_yticks(range(len(m["policies"])),
                  [f"{p} policy" if p == "sft" else f"PPO vs {p} RM" for p in m["policies"]])
    for tick, name in [*zip(ax.get_xticklabels(), m["judges"]), *zip(ax.get_yticklabels(), m["policies"])]:
        if name in PRECISION_COLORS:
            tick.set_color(precision_color(name))
    ax.set_xlabel("judge (reward model scoring the responses)")
    fig.colorbar(image, ax=ax, label="mean reward")
    ax.set_title("Every policy under every reward model", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------- tables
def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    return format(value, spec)


def _cell(entry: dict, key: str, spec: str, scale: float = 1.0) -> str:
    """A formatted metric: "failed" for a failed run, "—" for a value that does not exist."""
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


def summary_table(ppo: dict) -> pd.DataFrame:
    """The experiment's headline table: one row per reward-model precision."""
    rows = []
    for p in _precisions(ppo):
        e = ppo["precisions"][p]
        mean, std = _value(e, "judged_reward_mean"), _value(e, "judged_reward_std")
        reward = "failed" if not _done(e) else (
            _fmt(mean, ".3f") if std is None or mean is None else f"{mean:.3f} ± {std:.3f}")
        rows.append({
            "RM precision": p,
            "final judged reward": reward,
            "gain vs SFT": _cell(e, "gain_vs_sft", "+.3f"),
            "tax vs bf16": _cell(e, "tax_vs_bf16", "+.1%"),
            "KL": _cell(e, "kl_mean", ".3f"),
            "win rate vs SFT": _cell(e, "win_rate_vs_sft", ".1%"),
            "time (s)": _cell(e, "train_seconds_mean", ".0f"),
            "peak memory (MiB)": _cell(e, "peak_memory_bytes_max", ".0f", MIB),
            "status": _status(e),
        })
    return pd.DataFrame(rows)


def rm_table(rm: dict) -> pd.DataFrame:
    """Reward models side by side: accuracy with its 95% CI, agreement with bf16, and costs."""
    rows = []
    for p in _precisions(rm):
        e = rm["precisions"][p]
        acc, ci = _value(e, "accuracy"), _value(e, "accuracy_ci95")
        accuracy = "failed" if not _done(e) else (
            _fmt(acc, ".2f") if ci is None or acc is None else f"{acc:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")
        rows.append({
            "RM precision": p,
            "accuracy [95% CI]": accuracy,
            "agreement with bf16": _cell(e, "agreement_with_bf16", ".3f"),
            "rank corr. with bf16": _cell(e, "rank_correlation_with_bf16", ".3f"),
            "footprint (MiB)": _cell(e, "footprint_bytes", ".1f", MIB),
            "train (s)": _cell(e, "train_seconds", ".0f"),
            "peak memory (MiB)": _cell(e, "peak_memory_bytes", ".0f", MIB),
            "throughput (pairs/s)": _cell(e, "throughput_pairs_per_s", ".1f"),
            "status": _status(e),
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- draw_all
RM_FIGURES = {"rm_accuracy": plot_rm_accuracy, "rm_costs": plot_rm_costs}
PPO_FIGURES = {"ppo_final_reward": plot_final_reward, "ppo_training_curves": plot_training_curves,
               "ppo_reward_vs_kl": plot_reward_vs_kl, "ppo_time_memory": plot_time_memory,
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
