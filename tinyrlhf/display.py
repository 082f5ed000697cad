"""Small display helpers for the notebooks: result dicts as pandas tables, a few figures, byte and time formatting.

The notebooks call one package function per section and show its result with these helpers, so that a notebook
holds no logic of its own. Tables are plain ``pandas.DataFrame`` objects; `wrap` shows every one of them in one
style (no index, text wrapped, numbers right-aligned and unwrapped). Figures are ``matplotlib.figure.Figure`` objects that are not
registered with pyplot (as in plots.py): show them with ``display(fig)``.
"""

from __future__ import annotations

import math
import os
import re
import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .config import Paths, Profile, default_profile_name
from .env import capacities as env_capacities
from .memory import format_bytes
from .plots import MISSING, arm_label, onset_words, precision_color, trend_words
from .stats import control_passed, minimum_detectable

VERDICT_COLORS = {"fits": "#009E73", "tight": "#E69F00", "will not fit": "#D55E00"}
LENGTH_FIELDS = ("prompt", "chosen", "rejected")
LENGTH_COLORS = {"prompt": "#56B4E9", "chosen": "#009E73", "rejected": "#D55E00"}


# ------------------------------------------------------------------------------------------------ formatting
def format_seconds(s: float | None) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min; "—" for None."""
    if s is None or not math.isfinite(s):
        return MISSING
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _num(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return MISSING
    return format(v, spec)


# a number, optionally signed, with a unit and an interval: "0.79 [0.71, 0.85]", "+26% [-11%, +77%]", "4.0 MiB"
_NUMBER = re.compile(r"^[+\-\u2212]?\d[\d,.]*\s*(%|s|x|B|KiB|MiB|GiB)?(\s*\[[^\]]*\])?$")


def _number_cell(value) -> str:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if numeric or (isinstance(value, str) and _NUMBER.match(value.strip())):
        return "text-align: right; white-space: nowrap"
    return ""


def wrap(df: pd.DataFrame, width: str = "48em"):
    """Every table the notebooks show, in one style: no index column, text left-aligned with newlines kept and long
    cells wrapped at `width`, numbers (with their units and intervals) right-aligned and never wrapped."""
    cells = [{"selector": "td", "props": [("text-align", "left"), ("white-space", "pre-wrap"),
                                          ("vertical-align", "top"), ("max-width", width)]},
             {"selector": "th", "props": [("text-align", "left")]}]
    # escape: dialogue text may hold "<" or "&", which must show as text, not as HTML.
    return (df.style.format(escape="html").set_table_styles(cells).map(_number_cell)
            .hide(axis="index"))


def table(rows, columns=("item", "value")) -> pd.DataFrame:
    """(item, value) pairs, or a mapping, as a two-column table."""
    rows = list(rows.items()) if isinstance(rows, dict) else list(rows)
    return pd.DataFrame(rows, columns=list(columns))


# ------------------------------------------------------------------------------------------------- set-up
def profile_line(requested: str | None, profile: Profile) -> str:
    """Which profile the notebook uses, and why."""
    if requested is None:
        _, why = default_profile_name()
    elif os.environ.get("TINYRLHF_PROFILE") == requested:
        why = "TINYRLHF_PROFILE is set"
    else:
        why = "PROFILE is set in the parameters cell"
    return f"Profile: {profile.name} ({why})"


def reuse_note(result: dict) -> str:
    """Whether a stage computed its result now or reused a previous run's."""
    if result.get("reused"):
        return ("Reused the outputs of a previous run with the same settings "
                "(set TINYRLHF_FORCE=1, or FORCE = True in the parameters cell, to recompute).")
    return "Computed now; the outputs are saved and reused next time while the settings stay the same."


def paths_table(paths: Paths) -> pd.DataFrame:
    """The artifact folders and whether they exist."""
    rows = [(name, str(getattr(paths, name)), getattr(paths, name).is_dir())
            for name in ("root", "data", "models", "results", "figures")]
    return pd.DataFrame(rows, columns=["folder", "path", "exists"])


# ---------------------------------------------------------------------------------------------- 00 setup
def capacities(report: dict) -> tuple[int | None, int]:
    """env.capacities: the card's free memory (or None) and the total RAM, in bytes."""
    return env_capacities(report)


def problems_view(problems: list[dict], profile: Profile):
    """The environment's problems as a table, or a one-line all-clear."""
    if not problems:
        from IPython.display import Markdown

        return Markdown(f"**No problems**: this machine has what the `{profile.name}` profile needs.")
    return wrap(pd.DataFrame(problems, columns=["what", "why", "fix"]))


def install_summary(commands: list[str], installed: bool) -> str:
    if not commands:
        return "Every pinned package is installed at its pinned version: nothing to install."
    lines = "\n".join(f"  {c}" for c in commands)
    if installed:
        return f"Ran:\n{lines}\nRestart the kernel so that the new versions are imported."
    return (f"Would run (set INSTALL_MISSING = True in the parameters cell to do it; torch is never installed "
            f"from here):\n{lines}")


def verdicts_table(verdicts: list[dict]) -> pd.DataFrame:
    """memory.stage_verdicts rows with readable sizes."""
    return pd.DataFrame([{"stage": v["stage"], "device": v["device"], "estimate": format_bytes(v["estimate_bytes"]),
                          "capacity": format_bytes(v["capacity_bytes"]), "verdict": v["verdict"],
                          "reason": v["reason"]} for v in verdicts])


def key_values(d: dict, skip=()) -> pd.DataFrame:
    return pd.DataFrame([{"setting": k, "value": "—" if v is None else str(v)} for k, v in d.items() if k not in skip])


def kernel_check_table(result: dict) -> pd.DataFrame:
    """03's record of how each quantized reward model scores on the CPU (the kernel PPO uses) and how far
    bitsandbytes' own CPU paths are from it on the held-out pairs."""
    rows = []
    for mid, rec in result["models"].items():
        check = rec.get("cpu_kernel_check")
        if rec.get("status") != "ok" or not check:
            continue
        for other, c in check["others"].items():
            rows.append({"reward model": mid, "scores with": f"{check['used']} ({rec['cpu_kernel']['dtype']})",
                         "other CPU path": other, "same order": f"{c['same_order']:.1%}",
                         "largest score difference": f"{c['max_abs_score_difference']:.2g}",
                         "mean |margin|": f"{check['mean_abs_margin']:.2f}",
                         "pairs/s (used, other)": f"{check['pairs_per_s']:.0f}, {c['pairs_per_s']:.0f}"})
    return pd.DataFrame(rows)


def arithmetic_table(result: dict) -> pd.DataFrame:
    """What each arm's reward models computed when trained and when scored (its first finished seed), by device:
    one arithmetic per arm (kernels.ARITHMETIC), named."""
    rows, seen = [], set()
    for rec in result["models"].values():
        arm = rec.get("arm")
        if rec.get("status") != "ok" or arm in seen or not rec.get("arithmetic"):
            continue
        seen.add(arm)
        rows.append({"arm": arm, "precision": rec["precision"], "trained as": rec["arithmetic"]["train"],
                     "scored as": rec["arithmetic"]["score"]})
    return pd.DataFrame(rows)


def preflight_table(out: dict) -> pd.DataFrame:
    """The preflight's verdict per stage, with its seconds and measured peak beside the estimate."""
    def size(b):
        return "—" if not b else format_bytes(b)

    return pd.DataFrame([{"stage": r["stage"], "verdict": r["verdict"],
                          "seconds": "—" if r.get("seconds") is None else f"{r['seconds']:.0f}",
                          "measured peak": size(r.get("peak_bytes")), "estimate": size(r.get("estimate_bytes")),
                          "why": r.get("reason") or ""} for r in out["stages"]])


def kernels_table(scoring: dict) -> pd.DataFrame:
    """env.reward_scoring's kernel per precision: which CPU path each reward model scores with, and why."""
    return pd.DataFrame([{"precision": p, "kernel": k["kernel"], "computes in": k["dtype"], "why": k["why"]}
                         for p, k in scoring["kernels"].items()])


def budget_table(rows: list[dict], bound: list[dict] | None = None) -> pd.DataFrame:
    """budget.predict rows, hours with one decimal, and a total row; with `bound` (the same prediction at the
    profile's limits) its hours beside them."""
    table = [{"stage": r["stage"], "hours": f"{r['hours']:.1f}", "GPU hours": f"{r['gpu_hours']:.1f}",
              "CPU scoring hours": f"{r['cpu_hours']:.1f}", "dominated by": r["dominated_by"], "work": r["work"]}
             for r in rows]
    total = sum(r["hours"] for r in rows)
    table.append({"stage": "total", "hours": f"{total:.1f}", "GPU hours": f"{sum(r['gpu_hours'] for r in rows):.1f}",
                  "CPU scoring hours": f"{sum(r['cpu_hours'] for r in rows):.1f}", "dominated by": "", "work": ""})
    frame = pd.DataFrame(table)
    if bound is not None:
        limits = [f"{b['hours']:.1f}" for b in bound] + [f"{sum(b['hours'] for b in bound):.1f}"]
        frame.insert(4, "hours at the limits", limits)
    return frame


def milestone_words(expected: dict, bound: dict | None = None) -> str:
    """budget.milestones in a sentence: what a user has by when (the upper bound's hours in brackets)."""
    def hours(key):
        return f"{expected[key]:.1f} h" + (f" ({bound[key]:.1f} h at the limits)" if bound else "")

    return (f"The best-of-n tax of every arm, with its intervals, after {hours('bon_tax_hours')}, at 03's end and "
            f"before any PPO run; then each of the {expected['ppo_runs']} PPO runs adds its numbers every "
            f"{hours('ppo_run_hours')}; the whole study {hours('study_hours')}.")


def ppo_by_when(milestones: dict, workers: int) -> str:
    """04's sentence: how long its PPO runs will take, and that finished runs are kept."""
    each = milestones["ppo_run_hours"] * workers  # predict counts the jobs that run at once as sharing the clock
    return (f"Predicted: {milestones['ppo_runs']} PPO runs with their evaluation, about {_duration(each)} each"
            + (f", {workers} at a time" if workers > 1 else "")
            + f"; all of them after about {_duration(milestones['ppo_runs'] * milestones['ppo_run_hours'])}. "
              "Every finished run is kept: stopped early, a rerun trains only the runs that had not finished.")


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.0f} min" if hours >= 1 / 60 else f"{3600 * hours:.0f} s"


def plot_verdicts(verdicts: list[dict]) -> Figure:
    """Estimated peak memory per stage against the capacity it is judged by, coloured by verdict."""
    from matplotlib.patches import Patch

    fig = Figure(figsize=(7, 0.32 * len(verdicts) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    rows = verdicts[::-1]  # first stage at the top
    ax.barh([v["stage"] for v in rows], [v["estimate_bytes"] / 2**30 for v in rows],
            color=[VERDICT_COLORS.get(v["verdict"], "0.5") for v in rows])
    for i, v in enumerate(rows):
        ax.annotate(format_bytes(v["estimate_bytes"]), (v["estimate_bytes"] / 2**30, i), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=7)
    for cap in sorted({v["capacity_bytes"] for v in verdicts}):
        ax.axvline(cap / 2**30, color="black", ls="--", lw=1)
        ax.annotate(f"capacity {format_bytes(cap)}", (cap / 2**30, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-3, -3), textcoords="offset points", ha="right", va="top", fontsize=8)
    ax.set_xlim(0, max([v["capacity_bytes"] for v in verdicts] + [v["estimate_bytes"] for v in verdicts],
                       default=1) / 2**30 * 1.05)
    device = verdicts[0]["device"] if verdicts else "?"
    ax.set_xlabel(f"estimated peak memory (GiB); judged against {'GPU memory' if device == 'cuda' else 'RAM'}")
    ax.set_title("Does each stage fit?", fontsize=10)
    ax.legend(handles=[Patch(color=c, label=v) for v, c in VERDICT_COLORS.items()], fontsize=8, loc="lower right")
    return fig


# ----------------------------------------------------------------------------------------------- 01 data
def data_counts_table(stats: dict) -> pd.DataFrame:
    """Records read, parsed, skipped, kept, and the split."""
    skipped = sum((stats.get("skipped") or {}).values())
    rows = [("source", stats["source"]),
            ("files", ", ".join(os.path.basename(f) for f in stats.get("sha256") or {}) or MISSING),
            ("records read", stats["rows_read"]),
            ("parsed", stats.get("parsed", MISSING)),
            ("skipped (all reasons)", skipped),
            ("kept", stats["kept"]),
            ("train pairs", stats["train"]),
            ("test pairs", stats["test"])]
    if stats.get("capped_from"):
        rows.append(("capped from (data.max_pairs)", stats["capped_from"]))
    if stats.get("missing_subsets"):
        rows.append(("missing subsets", ", ".join(stats["missing_subsets"])))
    return table([(k, str(v)) for k, v in rows])


def skipped_table(stats: dict, examples: int = 2) -> pd.DataFrame:
    """One row per skip reason with its count and a few examples (where, what)."""
    rows = []
    for reason, count in (stats.get("skipped") or {}).items():
        found = (stats.get("skipped_examples") or {}).get(reason, [])[:examples]
        text = "\n".join(f"{e['where']}: {e['detail']}" if e.get("detail") else e["where"] for e in found)
        rows.append({"reason": reason, "count": count, "examples": text or MISSING})
    return pd.DataFrame(rows, columns=["reason", "count", "examples"])


def length_percentiles_table(stats: dict) -> pd.DataFrame:
    """Token-length percentiles of the kept pairs, one row per field."""
    rows = []
    for name in LENGTH_FIELDS:
        q = (stats.get("token_lengths") or {}).get(name) or {}
        rows.append({"field": name, **{k: _num(q.get(k), ".1f" if k == "mean" else ".0f")
                                       for k in ("p50", "p90", "p99", "max", "mean")}})
    return pd.DataFrame(rows)


def plot_token_lengths(lengths: dict, limits: dict | None = None) -> Figure:
    """Histograms of token lengths (train and test together) per field, with the length limits as lines."""
    fig = Figure(figsize=(9, 3), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(LENGTH_FIELDS)), LENGTH_FIELDS):
        values = [v for split in lengths.values() for v in split.get(name, [])]
        # One bin per token count when the range is small, so integer lengths do not alias into the bins.
        lo, hi = (min(values), max(values)) if values else (0, 1)
        bins = np.arange(lo, hi + 2) - 0.5 if hi - lo <= 80 else 40
        ax.hist(values, bins=bins, color=LENGTH_COLORS[name])
        if limits and limits.get(name):
            ax.axvline(limits[name], color="black", ls="--", lw=1, label=f"limit {limits[name]}")
            ax.legend(fontsize=8)
        ax.set_title(f"{name} ({len(values)} pairs)", fontsize=10)
        ax.set_xlabel("tokens")
    fig.axes[0].set_ylabel("pairs")
    fig.suptitle("Token lengths of the prepared pairs", fontsize=11)
    return fig


def pairs_table(pairs, n: int = 3, width: int = 600) -> pd.DataFrame:
    """The first `n` preference pairs (prompt, chosen, rejected), long texts shortened."""
    def cut(text: str) -> str:
        return text if len(text) <= width else text[:width] + " …"

    return pd.DataFrame([{"prompt": cut(p.prompt.strip()), "chosen": cut(p.chosen), "rejected": cut(p.rejected)}
                         for p in list(pairs)[:n]])


# ------------------------------------------------------------------------------------------------ 02 SFT
def sft_before_after_table(result: dict) -> pd.DataFrame:
    """Held-out loss and perplexity of the base model and the fine-tuned one."""
    rows = []
    for name in ("before", "after"):
        r = result[name]
        rows.append({"model": "base (before SFT)" if name == "before" else "SFT (after)",
                     "held-out loss": _num(r.get("loss"), ".4f"), "perplexity": _num(r.get("perplexity"), ".2f"),
                     "tokens": r.get("tokens", MISSING), "pairs": r.get("pairs", MISSING)})
    return pd.DataFrame(rows)


def sft_parameters_table(result: dict) -> pd.DataFrame:
    """Trainable (LoRA) versus total parameters, training time and peak memory."""
    trainable, total = result.get("trainable_parameters"), result.get("total_parameters")
    share = f"{trainable / total:.2%}" if trainable and total else MISSING
    rows = [("trainable parameters (LoRA)", f"{trainable:,}" if trainable is not None else MISSING),
            ("total parameters", f"{total:,}" if total is not None else MISSING),
            ("trainable share", share),
            ("loss drop (before - after)", _num(result.get("loss_drop"), ".4f")),
            ("training time", format_seconds(result.get("train_seconds"))),
            ("peak memory", format_bytes(result.get("peak_memory_bytes")))]
    base = result.get("base_pretraining") or {}
    if base.get("built"):
        rows += [("base model pre-training", f"{base.get('steps')} steps in {format_seconds(base.get('seconds'))}, "
                                             f"{base.get('parameters', 0):,} parameters"),
                 ("pre-training loss", f"{_num(base.get('first_loss'), '.3f')} → {_num(base.get('final_loss'), '.3f')}")]
    return table(rows)


def plot_sft_loss(result: dict) -> Figure:
    """SFT training loss per step; beside it the base model's pre-training loss when it was built here."""
    base = (result.get("base_pretraining") or {}).get("loss_curve") or []
    fig = Figure(figsize=(9 if base else 4.8, 3.2), layout="constrained")
    axes = fig.subplots(1, 2 if base else 1, squeeze=False)[0]
    curve = result.get("loss_curve") or []
    ax = axes[-1]
    ax.plot([c["step"] for c in curve], [c["loss"] for c in curve], marker="o", ms=3, color="#0072B2")
    ax.set_xlabel("SFT step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA SFT training loss", fontsize=10)
    for name in ("before", "after"):
        loss = (result.get(name) or {}).get("loss")
        if loss is not None:
            ax.axhline(loss, ls=":" if name == "before" else "--", color="0.4", lw=1,
                       label=f"held-out loss {name} ({loss:.3f})")
    ax.legend(fontsize=8)
    if base:
        ax0 = axes[0]
        steps = (result.get("base_pretraining") or {}).get("steps")
        if steps:  # the losses are logged at even intervals up to the last step
            ax0.plot(np.linspace(steps / len(base), steps, len(base)), base, marker="o", ms=3, color="#999999")
            ax0.set_xlabel("pre-training step")
        else:
            ax0.plot(range(1, len(base) + 1), base, marker="o", ms=3, color="#999999")
            ax0.set_xlabel("logged point")
        ax0.set_ylabel("training loss")
        ax0.set_title("base model pre-training loss", fontsize=10)
    return fig


def generations_table(result: dict, width: int = 400) -> pd.DataFrame:
    """Sample prompts with the base model's and the SFT model's replies."""
    def cut(text: str) -> str:
        text = (text or "").strip()
        return text if len(text) <= width else text[:width] + " …"

    return pd.DataFrame([{"prompt": cut(g["prompt"]), "before SFT": cut(g["before"]), "after SFT": cut(g["after"])}
                         for g in result.get("generations") or []], columns=["prompt", "before SFT", "after SFT"])


# ------------------------------------------------------------------------------------------ 03 reward models
def plot_rm_loss(result: dict) -> Figure:
    """Reward-model training loss per logged point: a thin line per reward-model seed in its arm's colour."""
    fig = Figure(figsize=(6.8, 3.4), layout="constrained")
    ax = fig.add_subplot()
    for arm, summary in result["arms"].items():
        curves = [[v for v in m.get("loss_curve") or [] if v is not None]
                  for m in result["models"].values() if m.get("arm") == arm and m.get("status") == "ok"]
        curves = [c for c in curves if c]
        for i, curve in enumerate(curves):
            ax.plot(range(1, len(curve) + 1), curve, color=precision_color(arm), lw=1, alpha=0.6,
                    label=f"{arm_label(arm)} ({len(curves)} seeds)" if i == 0 else None)
        if not curves:
            ax.plot([], [], ls=":", color=precision_color(arm),
                    label=f"{arm}: {textwrap.shorten(summary.get('reason') or 'no curve', 40, placeholder='…')}")
    ax.axhline(math.log(2), color="black", ls=":", lw=1, label="chance (ln 2)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("logged point")
    ax.set_ylabel("pairwise loss")
    ax.set_title("Reward-model training loss (a line per seed)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def rm_category_sentences(result: dict) -> list[str]:
    """Per arm: how many of its seeds are above chance (the whole 95% interval over 0.5) in every category, and
    which seed and category fall short."""
    lines = []
    for arm, e in result["arms"].items():
        models = [m for m in result["models"].values() if m.get("arm") == arm and m.get("status") == "ok"]
        if not models:
            continue
        weak = [f"{m['seed'] if m['seed'] is not None else arm} on {c}" for m in models
                for c, v in (m.get("by_category") or {}).items() if v["accuracy_ci95"][0] <= 0.5]
        share = e.get("above_chance_share")
        text = f"{arm_label(arm)}: {share:.0%} of {len(e['seeds'])} seed(s) above chance in every category"
        lines.append(text + ("." if not weak else f"; not shown above chance: seed {', seed '.join(weak)} "
                                                  "(interval reaches 0.5)."))
    return lines


def pool_samples_table(bon: dict, width: int = 300) -> pd.DataFrame:
    """A few candidates of best-of-n's pool as text, with the judge's score and whether they ended."""
    cut = lambda t: (t or "").strip() if len(t or "") <= width else t[:width] + " …"
    return pd.DataFrame([{"prompt": cut(s["prompt"]), "candidate": cut(s["response"]),
                          "ended": "yes" if s.get("ended", True) else "no (cut at max_new)",
                          "judge": _num(s.get("gold"), ".2f")} for s in bon.get("samples") or []],
                        columns=["prompt", "candidate", "ended", "judge"])


def seeds_line(rm: dict) -> str:
    """How many reward-model seeds 03 used: fixed by rm.seeds, or chosen by the seeds-until-resolved rule, with each
    round's widest headline half-width."""
    rule = rm.get("seeds_rule")
    if not rule:
        return f"Reward-model seeds: {len(rm['seeds'])} ({', '.join(map(str, rm['seeds']))}), fixed by rm.seeds."
    rounds = "; ".join(f"{h['seeds']} seeds: {arm_label(h['widest'][0])} "
                       + ("undefined" if h["widest"][1] is None else f"±{h['widest'][1]:.1%}")
                       for h in rule.get("history") or [])
    last = (rule.get("history") or [{}])[-1]
    cite = "; ".join(f"{arm_label(a)} [{ci[0]:+.1%}, {ci[1]:+.1%}]" for a, ci in (last.get("intervals") or {}).items()
                     if ci)
    return (f"Reward-model seeds until resolved (rm.seeds='auto', target ±{rule['target']:.0%} of bf16's gain, "
            f"{rule['seeds_min']} to {rule['seeds_max']} seeds): {rule['chosen']} used. {last.get('reason', '')} "
            f"Widest headline half-width ({last.get('level', 0.99):.0%}) by round: {rounds or '-'}. Under this rule "
            f"cite the {last.get('level', 0.99):.0%} intervals, which cover 95% after the optional stop: "
            f"{cite or 'none defined'}.")


def labels_line(rm: dict) -> str:
    """Whose labels the reward models learned: the data's, or the judge's (rm.labels), with how many it changed; the
    test pairs keep the data's labels either way."""
    r = rm.get("relabelled")
    if rm.get("labels") != "judge" or not r:
        return "Training labels: the data's (its human preferences; rm.labels = \"data\")."
    return (f"Training labels: the judge's ({r['judge']}; rm.labels = \"judge\"): of {r['pairs']} training pairs, "
            f"{r['swapped']} ({r['swapped'] / max(r['pairs'], 1):.1%}) were swapped to the reply it scores higher, "
            f"{r['tied']} tied and kept the data's label. The judge is then the gold these reward models learn; the "
            "accuracies below still score them against the test pairs' human labels.")


def compute_dtype_line(result: dict) -> str | None:
    """What the "bf16" arm computed in, when it was not bf16: on the cpu profile its reward models compute in
    float32 (rm.cpu_dtype = "fp32"), and every table of this result should be read so."""
    m = result.get("manifest") or {}
    if (m.get("config") or {}).get("rm", {}).get("cpu_dtype") == "fp32" and not (m.get("hardware") or {}).get("cuda"):
        return ('On this run the "bf16" arm computes in float32 (rm.cpu_dtype = "fp32" on a CPU): "bf16" names its '
                "precision on a card; the int8 and NF4 arms dequantize to float32 here too.")
    return None


def bon_sentences(bon: dict) -> list[str]:
    """Best-of-n in words: where bf16 peaks, each arm's tax at the headline n with what its interval rules out, and the
    controls' verdicts."""
    star = bon.get("n_star")
    bf16 = (bon["arms"].get("bf16") or {}).get("at_n_star") or {}
    if star is None or bf16.get("gold_gain_vs_sft") is None:
        return ["No best-of-n gain for bf16: nothing to compare against."]
    g = bf16.get("gold_gain_vs_sft_ci95") or [None, None]
    rule = bon.get("n_star_rule") or "n*, where bf16's gold gain peaks"
    lines = [f"The arms are compared at n = {star} ({rule}); bf16's gold gain peaks at n = {bon.get('n_peak', star)}. "
             f"At n = {star} bf16 gains {bf16['gold_gain_vs_sft']:+.3f} over the SFT policy's mean "
             f"({bon['pool_gold_mean']:.3f}), 95% CI [{_num(g[0], '+.3f')}, {_num(g[1], '+.3f')}]."]
    lines += [line] if (line := compute_dtype_line(bon)) else []
    for arm, e in bon["arms"].items():
        if arm == "bf16":
            continue
        lines.append(f"{arm_label(arm)}: " + _tax_words(arm, (e.get("at_n_star") or {}), bon.get("null_arm")))
    return lines


def _tax_words(arm: str, e: dict, null: str | None) -> str:
    """One arm's tax in words: value and interval, or why there is none; what the interval rules out; the null and
    noisy arms' verdicts as controls; whether it is apart from the null arm."""
    diff, dci = e.get("gain_diff_vs_bf16"), e.get("gain_diff_vs_bf16_ci95")
    absolute = "" if diff is None else (f"gain difference {diff:+.3f}" + (
        f" [{dci[0]:+.3f}, {dci[1]:+.3f}]" if dci else ""))
    if e.get("tax_vs_bf16") is None or not e.get("tax_vs_bf16_ci95"):
        return f"tax undefined ({e.get('tax_undefined') or 'no interval'}); {absolute or 'no gain difference'}."
    lo, hi = e["tax_vs_bf16_ci95"]
    text = f"tax {e['tax_vs_bf16']:+.1%} [{lo:+.1%}, {hi:+.1%}] ({absolute})"
    if arm == null:
        return text + "; the negative control: " + ("its interval contains 0, as it must."
                                                    if control_passed("null", [lo, hi]) else
                                                    "its interval EXCLUDES 0: the instrument sees an effect where "
                                                    "there is none.")
    if arm == "noisy":
        return text + "; the positive control: " + ("detected (its interval excludes 0)."
                                                    if control_passed("noisy", [lo, hi]) else
                                                    "NOT detected: the instrument missed a known effect.")
    if not e.get("ratio_leads", True) and absolute:
        m = e.get("reference_gain_margins")
        text = (f"{absolute}; as a share of bf16's gain (only {_num(m, '.1f')} times its own 95% margin from 0, so the "
                f"ratio is unstable and the difference leads): tax {e['tax_vs_bf16']:+.1%} [{lo:+.1%}, {hi:+.1%}]")
    family = e.get("tax_vs_bf16_family_ci95")
    if lo <= 0 <= hi:
        at = f" at n = {e['n']}" if e.get("n") else ""  # best-of-n's entries know their n
        text += f"; not resolved from 0: it costs less than {hi:.1%} of bf16's gain{at} (95%)"
        if family:
            text += (f", {family[1]:.1%} with all {len(e.get('family') or [])} of "
                     f"{e.get('family_name') or 'the headline claims'} held at once (Bonferroni)")
    else:
        text += "; resolved: " + ("a loss" if lo > 0 else "a gain over bf16")
    mde = minimum_detectable(e["tax_vs_bf16_ci95"], e.get("tax_df"))
    if mde is not None:
        text += f"; the smallest tax this design detects 4 times in 5: {mde:.1%}"
    taxes, p = e.get("per_seed_tax"), e.get("sign_flip_p")
    if taxes:
        text += "; per seed: " + ", ".join(_num(t, "+.0%") for t in taxes)
    if p is not None:
        text += f" (exact sign-flip test over the {len(taxes or [])} paired seeds: p = {p:.3f})"
    ci = e.get("tax_minus_null_ci95")
    if ci is not None:
        text += "; " + ("apart from the null arm" if not ci[0] <= 0 <= ci[1] else "within the null arm's noise")
    return text + "."


def bits_sentences(bon: dict) -> list[str]:
    """The bits sweep in words: what was served, the trend, where the tax begins (or that no width's does), and
    what the trained arms add over the served ones."""
    sweep = bon.get("bits")
    if not sweep or not sweep.get("rows"):
        return ["No bits sweep in this run (eval.serve_bits is empty)."]
    n = bon.get("n_star")
    lines = [f"Served at k bits: {sweep.get('how', 'k-bit weights')}. At n = {n}: " + "; ".join(
        f"{r['bits']} bits " + (f"{r['tax_vs_bf16']:+.1%} [{r['tax_vs_bf16_ci95'][0]:+.1%}, "
                                f"{r['tax_vs_bf16_ci95'][1]:+.1%}]" if r.get("tax_vs_bf16_ci95") else "n/a")
        for r in sweep["rows"]) + "."]
    trend = sweep.get("trend") or {}
    if trend.get("per_halving_ci95"):
        lo, hi = trend["per_halving_ci95"]
        resolved = "rises as bits fall" if lo > 0 else "falls as bits fall" if hi < 0 else "has no resolved trend"
        lines.append(f"Trend: {trend_words(sweep)}: the tax {resolved} (by its interval, which counts the prompts).")
    elif trend or sweep.get("rows"):
        lines.append(f"Trend: {trend_words(sweep)}.")
    lines.append(f"Where the tax begins (widths tested from the fewest bits up, each only while every narrower one was "
                 f"resolved: 5% family-wise): {onset_words(sweep)}.")
    for precision, d in (bon.get("trained_minus_served") or {}).items():
        if d.get("ci95"):
            lines.append(f"Trained {precision} minus served {precision} (tax difference): {d['value']:+.1%} "
                         f"[{d['ci95'][0]:+.1%}, {d['ci95'][1]:+.1%}] (per-seed sign-flip p = "
                         f"{_num(d.get('sign_flip_p'), '.3f')}, conditional on these prompts)."
                         " It cannot separate the precision's arithmetic during training from the other training path "
                         "the trained arm takes (a partial reseed): the served arm shares bf16's training.")
    return lines


def tax_by_n_table(bon: dict) -> pd.DataFrame:
    """Every n: each quantized arm's tax with its 95% interval and its band simultaneous over every n."""
    rows = []
    arms = [a for a in bon["arms"] if a != "bf16"]
    for k, n in enumerate(bon["ns"]):
        row = {"n": n}
        for arm in arms:
            r = (bon["arms"][arm].get("by_n") or [{}] * len(bon["ns"]))[k]
            t, ci, band = r.get("tax_vs_bf16"), r.get("tax_vs_bf16_ci95"), r.get("tax_vs_bf16_band")
            row[arm_label(arm)] = "undefined" if t is None else (
                f"{t:+.1%} [{ci[0]:+.1%}, {ci[1]:+.1%}]" + (f" band [{band[0]:+.1%}, {band[1]:+.1%}]" if band else "")
                if ci else f"{t:+.1%}")
        rows.append(row)
    return pd.DataFrame(rows)


def _pct_ci(value, ci, points: bool = False) -> str:
    if value is None:
        return "undefined"
    unit = 100 if points else 1
    fmt = (lambda v: f"{v * unit:+.1f}") if points else (lambda v: f"{v:+.1%}")
    return fmt(value) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def second_judge_table(bon: dict) -> pd.DataFrame:
    """Each arm's best-of-n tax at the headline n under the judge and under the same-recipe judge, and the paired
    difference in points (second minus judge), with its interval, per-seed values and sign-flip p."""
    s = bon.get("second_judge") or {}
    rows = [{"arm": arm_label(arm), "tax, judge": _pct_ci(r["tax_judge"], r.get("tax_judge_ci95")),
             "tax, same-recipe judge": _pct_ci(r["tax_second"], r.get("tax_second_ci95")),
             "same-recipe - judge (points)": _pct_ci(r["difference"], r.get("difference_ci95"), points=True),
             "per seed": ", ".join("-" if d is None else f"{100 * d:+.0f}" for d in r.get("per_seed") or []),
             "sign-flip p": _num(r.get("sign_flip_p"), ".2f")}
            for arm, r in (s.get("arms") or {}).items()]
    return pd.DataFrame(rows)


def second_judge_sentences(bon: dict) -> list[str]:
    """In words: which second judge, whether it could be used, how far it moved the taxes, what that shows."""
    s = bon.get("second_judge")
    if not s:
        return ["No second judge (eval.second_judge is 'none')."]
    if s.get("status") != "ok":
        return [f"The same-recipe judge ({s['name']}) could not judge the pool: {s.get('reason')}."]
    moved = [(a, r) for a, r in s["arms"].items() if r.get("difference_ci95") and r["difference_ci95"][0] > 0]
    acc = s.get("test_accuracy")
    lines = [f"Second judge: {s['name']}" + (f" ({acc:.0%} accurate on the test pairs)" if acc is not None else "")
             + f". Its scores and the judge's agree with rank correlation {s['rank_correlation']:.2f} over the pool; "
             f"bf16's gain peaks at n = {s['n_peak_judge']} under the judge and n = {s['n_peak_second']} under it."]
    lines.append(("Under it, these arms' taxes read higher, by an interval that excludes 0: "
                  + "; ".join(f"{arm_label(a)} {100 * r['difference']:+.1f} points" for a, r in moved)
                  if moved else "No arm's tax moved by an interval that excludes 0")
                 + f" (n = {s['n']}, paired by seed and prompt). A judge that shares the bf16 arm's recipe "
                 "shares its errors: where it reads a tax higher than the gold rule does, a real-data run judged by "
                 "such a model (eval.judge='heldout') would overstate that tax.")
    return lines


# -------------------------------------------------------------------------------------------------- 04 PPO
def judge_line(result: dict) -> str:
    j = result["judge"]
    acc = (j.get("test_pairs") or {})
    agrees = (f" It prefers the data's chosen reply on {acc['accuracy']:.0%} [{acc['accuracy_ci95'][0]:.0%}, "
              f"{acc['accuracy_ci95'][1]:.0%}] of {acc['pairs']} test pairs." if acc.get("accuracy") is not None else "")
    return f"Judge: {j['name']}. Why this judge: {j['why']}.{agrees}"


def tax_sentences(result: dict) -> list[str]:
    """In words: bf16's gain, and each arm's tax with what its interval rules out and the controls' verdicts."""
    lines = []
    bf16 = result["arms"].get("bf16", {})
    g = bf16.get("gold_gain_vs_sft_ci95")
    if bf16.get("gold_gain_vs_sft") is not None:
        lines.append(f"bf16: gain over SFT {bf16['gold_gain_vs_sft']:+.3f} under the judge, 95% CI "
                     + (f"[{g[0]:+.3f}, {g[1]:+.3f}]: " if g else "none (too few seeds): ")
                     + ("PPO improves on SFT." if g and g[0] > 0 else "not shown to improve on SFT."))
    lines += [line] if (line := compute_dtype_line(result)) else []
    for arm, e in result["arms"].items():
        if arm != "bf16" and e.get("status") in ("ok", "partial"):
            lines.append(f"{arm_label(arm)}: " + _tax_words(arm, e, result.get("null_arm")))
    return lines


def projection_lines(result: dict) -> list[str]:
    """Seeds (and prompts) that would bring each tax interval to a given half-width, from the variance components
    measured, with the spread of each projection when the seeds are resampled."""
    lines = []
    for arm, e in result["arms"].items():
        proj = e.get("projection") or {}
        by_seeds = proj.get("half_width_by_seeds") or {}
        if not by_seeds:
            continue
        spread = proj.get("half_width_by_seeds_range") or {}
        parts = []
        for s, hw in by_seeds.items():
            r = spread.get(s)
            parts.append(f"{s} seeds → ±{hw:.0%}" + (f" ({r[0]:.0%}-{r[1]:.0%})" if r else ""))
        line = f"{arm_label(arm)}: " + ", ".join(parts)
        best = proj.get("reaches_target")
        if best:
            line += (f"; ±{proj['target']:.0%} is reached with {best['seeds']} seeds and "
                     f"{best['prompt_factor']}× the prompts (projected ±{best['half_width']:.0%})")
        else:
            line += f"; no design in the grid reaches ±{proj.get('target', 0.25):.0%}"
        lines.append(line)
    return lines


def cross_matrix_table(result: dict) -> pd.DataFrame:
    """Mean reward of each policy (rows) under the judge and each reward model (columns)."""
    m = result["cross_matrix"]
    index = ["SFT policy" if p == "sft" else f"PPO vs {arm_label(p)}" for p in m["policies"]]
    values = [[_num(v, ".3f") for v in row] for row in m["mean_reward"]]
    df = pd.DataFrame(values, index=index, columns=["judge" if j == "judge" else f"{j} RM" for j in m["judges"]])
    return df.rename_axis("policy").reset_index()


def samples_table(result: dict, n: int = 3, width: int = 300) -> pd.DataFrame:
    """Sample replies of the SFT policy and of each arm's first seed, with the judge's score."""
    def cut(text: str) -> str:
        text = (text or "").strip()
        return text if len(text) <= width else text[:width] + " …"

    rows = []
    groups = [("SFT", result["sft"].get("samples") or [])]
    for arm, e in result["arms"].items():
        seeds = [s for s in e.get("seeds") or [] if s.get("status") == "ok"]
        if seeds:
            groups.append((f"PPO vs {arm_label(arm)} (RM seed {seeds[0].get('rm_seed')}, PPO seed {seeds[0]['seed']})",
                           seeds[0].get("samples") or []))
    for policy, samples in groups:
        for s in samples[:n]:
            rows.append({"policy": policy, "prompt": cut(s["prompt"]), "reply": cut(s["response"]),
                         "ended": "yes" if s.get("ended", True) else "no (cut at max_new)",
                         "judge": _num(s.get("judged_reward"), ".2f")})
    return pd.DataFrame(rows, columns=["policy", "prompt", "reply", "ended", "judge"])


def show_pngs(written: dict, save_dpi: int = 150, screen_dpi: int = 100) -> None:
    """Display the PNG of each figure that plots.draw_all wrote, under its name, at the size the same figure has
    inline (the PNGs are saved at 150 dpi, inline figures drawn at 100)."""
    import struct

    from IPython.display import Image, Markdown, display

    for name, files in written.items():
        png = next((f for f in files if str(f).endswith(".png")), None)
        if png is not None:
            with open(png, "rb") as f:
                pixels = struct.unpack(">I", f.read(24)[16:20])[0]  # IHDR width
            display(Markdown(f"**{name}** (`{png}`)"))
            display(Image(filename=str(png), width=round(pixels * screen_dpi / save_dpi)))


def sft_quality_line(result: dict) -> str:
    """The SFT policy's sampled replies in one sentence: ending with EOS, length, gold reward."""
    q = result.get("reply_quality")
    if not q:
        return "No sampled replies recorded."
    gold = "" if q.get("gold_mean") is None else f"; gold reward {q['gold_mean']:.2f} (the best reply scores 2)"
    return (f"{q['replies']} replies sampled as PPO samples them: {q['eos_share']:.0%} end with EOS within "
            f"{q['max_new']} tokens, {q['length_mean']:.0f} tokens on average{gold}.")
