"""The tables of docs/time-budget.md: the rtx4060 profile's predicted hours per stage (tinyrlhf.budget) on an RTX
4060 beside 8-core and 4-core desktop CPUs, the CPU reward-scoring measurements they rest on (docs/rm-scoring.json),
and how the total moves with each assumption.

Usage: .venv/bin/python scripts/time_budget.py [--write docs/time-budget.md]
(--write replaces the tables block and the summary block, each between its markers, and keeps the rest.)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable without installing the package

from tinyrlhf import budget, config, stats  # noqa: E402
from tinyrlhf.results import atomic_write_text  # noqa: E402

BEGIN, END = "<!-- time-budget tables: begin -->", "<!-- time-budget tables: end -->"
# The prose that quotes the tables' numbers is generated too, with the same rounding: hand-typed, it drifted from them.
SUMMARY_BEGIN, SUMMARY_END = "<!-- time-budget summary: begin -->", "<!-- time-budget summary: end -->"
TWO_EVENINGS_SEEDS = 5  # the reward-model seeds the summary offers a user with more time


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def prediction_table(machine: budget.Machine, name: str = "rtx4060") -> str:
    profile = config.get_profile(name)
    rows = budget.predict(profile, machine, lengths=budget.expected(profile))
    bound = budget.predict(profile, machine)
    body = [[r["stage"], f"{r['hours']:.1f}", f"{r['gpu_hours']:.1f}", f"{r['cpu_hours']:.1f}", f"{b['hours']:.1f}",
             r["dominated_by"], r["work"]] for r, b in zip(rows, bound)]
    body.append(["**total**", f"**{budget.total_hours(rows):.1f}**", f"{sum(r['gpu_hours'] for r in rows):.1f}",
                 f"{sum(r['cpu_hours'] for r in rows):.1f}", f"{budget.total_hours(bound):.1f}", "", ""])
    got, most = budget.milestones(profile, rows), budget.milestones(profile, bound)
    return table(["stage", "hours (expected lengths)", "GPU hours", "CPU scoring hours", "hours (upper bound)",
                  "dominated by", "work"], body) + (
        f"\n\nBy when: the best-of-n tax of every arm with its intervals after **{got['bon_tax_hours']:.1f} h** "
        f"({most['bon_tax_hours']:.1f} h at the upper bound), before any PPO run; then each of the "
        f"{got['ppo_runs']} PPO runs with its evaluation {got['ppo_run_hours']:.1f} h "
        f"({most['ppo_run_hours']:.1f} h); the whole study {got['study_hours']:.1f} h ({most['study_hours']:.1f} h).")


def sensitivity_table(machine: budget.Machine) -> str:
    profile = config.get_profile("rtx4060")
    expected = budget.expected(profile)

    def total(machine, **assumption):
        return budget.total_hours(budget.predict(profile, machine, lengths=expected, **assumption))

    base = total(machine)
    rows = [["as above", f"{base:.1f}"]]
    for label, assumption in (("MFU 0.20 instead of 0.35", {"mfu": 0.20}), ("MFU 0.50", {"mfu": 0.50}),
                              ("decode step 30 ms instead of 15", {"decode_step_s": 0.030})):
        rows.append([label, f"{total(machine, **assumption):.1f}"])
    half_cpu = dataclasses.replace(machine, cpu_tokens_per_s=machine.cpu_tokens_per_s / 2)
    rows.append(["CPU scoring half as fast", f"{total(half_cpu):.1f}"])
    card = dataclasses.replace(machine, cpu_tokens_per_s=float("inf"))
    rows.append(["reward model on the card (ppo.rm_device=cuda; scoring time ~0)",
                 f"{total(card):.1f}"])
    rows.append(["every sequence at the profile's limits", f"{budget.total_hours(budget.predict(profile, machine)):.1f}"])
    return table(["assumption", "total hours (expected lengths)"], rows)


def reference_table() -> str:
    import json

    kinds = json.loads(budget.REFERENCE_FILE.read_text())["kinds"]
    rows = []
    for kind, k in kinds.items():
        for key, r in k["runs"].items():
            tps = r["tokens_per_s"]
            bf16 = budget.bf16_rate(tps)
            rival = r.get("tokens_per_s_beside_rival") or {}
            for name, alone in tps.items():
                beside = rival.get(name)
                rows.append([f"{kind} ({', '.join(k['flags'])})", key, name, f"{alone:.0f}", f"{alone / bf16:.2f}x",
                             "–" if beside is None else f"{beside:.0f}",
                             "–" if beside is None else f"{alone / beside:.2f}x"])
    return table(["CPU kind (flags)", "run (torch threads, rival's threads)", "CPU path", "tokens/s alone", "vs bf16",
                  "beside the rival", "slowdown"], rows)


def record_components(bon_results: Path) -> None:
    """docs/variance-components.json from a cpu-profile run's bon_results.json: each quantized arm's variance
    components at n* and bf16's gain there (what budget.size_design sizes the card's design from)."""
    from tinyrlhf.results import atomic_write_json, read_json

    bon = read_json(bon_results)
    m = bon["manifest"]
    out = {"source": f"the {m['profile']} profile's make run at commit {m['git_commit'][:12]}, "
                     f"{m['hardware']['cpu_count']} CPU cores",
           "n_star": bon["n_star"], "ref_gain": bon["arms"]["bf16"]["at_n_star"]["gold_gain_vs_sft"],
           "components": {arm: bon["arms"][arm]["projection"]["components"] for arm in ("int8", "int4")}}
    atomic_write_json(budget.COMPONENTS_FILE, out)
    print(f"wrote {budget.COMPONENTS_FILE}")


def design_table(machine: budget.Machine) -> str:
    rec = budget.recorded_components()
    arm = budget.WIDEST_ARM
    design = budget.size_design(config.get_profile("rtx4060"), machine, rec["components"][arm], rec["ref_gain"],
                                lengths=budget.expected(config.get_profile("rtx4060")))
    rows = [[c["seeds"], c["prompts"], f"{c['bon_tax_hours']:.1f}", f"{c['study_hours']:.1f}",
             f"±{100 * c['half_width']:.1f}", "**chosen**" if c == design["chosen"] else ("fits" if c["fits"] else "")]
            for c in design["candidates"] if c["prompts"] in (64, 128, 256)]
    comp = rec["components"][arm]
    return (f"The {arm} arm's variance components at n* = {rec['n_star']} (the wider of int8 and int4; "
            f"`docs/variance-components.json`, from {rec['source']}): reward-model seed {comp['seed']:.5f}, prompt "
            f"{comp['prompt']:.5f}, residual {comp['residual']:.5f}, bf16's gain {rec['ref_gain']:.3f}. A stand-in: "
            f"the cpu profile's synthetic task, not HH-RLHF on Qwen2.5 (a card run records its own).\n\n"
            + table(["reward-model seeds", "evaluation prompts", "best-of-n tax by (h)", "study (h)",
                     "projected best-of-n tax half-width (points)", ""], rows))


def render() -> str:
    ref = budget.reference()
    parts = [f"Reference CPU: {ref['cpu']} ({ref['cpu_kind']}), measured {ref['date']}: {ref['bf16_tokens_per_s_per_thread']:.0f} bf16 "
             f"reward-model tokens/s per thread, {ref['gemm_gflops_per_thread']:.0f} float32 GFLOPS per thread; "
             f"{ref['scaling']:.2f}x the 1-thread rate on {ref['scaling_threads']} threads.", "",
             "CPU reward scoring at the real size (`benchmarks/rm_scoring.py --size real`, docs/rm-scoring.json):", "",
             reference_table(), ""]
    for cores in (8, 4):
        machine = budget.desktop(cores)
        parts += [f"**rtx4060 profile, {machine.source}** (reward model on {machine.cpu_threads} threads, "
                  f"{machine.cpu_tokens_per_s:.0f} tokens/s):", "", prediction_table(machine), ""]
    parts += ["How the 8-core total moves with each assumption:", "", sensitivity_table(budget.desktop(8)), "",
              "**The design sized to the card** (`budget.size_design`, 8-core desktop, expected lengths): the "
              "narrowest best-of-n tax interval with the tax by 3.1 h (the bits sweep included) and the study by 24 h; the rtx4060 profile's "
              "reward-model seeds and evaluation prompts are this choice (a test holds them to it).", "",
              design_table(budget.desktop(8)), "",
              f"**The study-sized design: rtx4060_study profile, {budget.desktop(8).source}**:", "",
              prediction_table(budget.desktop(8), "rtx4060_study")]
    return "\n".join([BEGIN, "Regenerate with: .venv/bin/python scripts/time_budget.py --write docs/time-budget.md",
                      "", *parts, END])


def summary() -> str:
    """The opening of "What dominates": the rtx4060 profile's milestones on the 8-core desktop and the design
    budget.size_design chose, in the tables' own rounded numbers."""
    machine, profile, study = budget.desktop(8), config.get_profile("rtx4060"), config.get_profile("rtx4060_study")
    lengths = budget.expected(profile)
    got = budget.milestones(profile, budget.predict(profile, machine, lengths=lengths))
    bound = budget.total_hours(budget.predict(profile, machine))
    study_hours = budget.total_hours(budget.predict(study, machine, lengths=budget.expected(study)))
    work, rec = budget.work_counts(profile), budget.recorded_components()
    design = budget.size_design(profile, machine, rec["components"][budget.WIDEST_ARM], rec["ref_gain"],
                                lengths=lengths)
    chosen = design["chosen"]
    at = {c["seeds"]: c for c in design["candidates"] if c["prompts"] == chosen["prompts"]}
    more, longer = at[chosen["seeds"] + 1], at[TWO_EVENINGS_SEEDS]
    judge = " and the heldout judge" if profile.eval.judge == "heldout" else ""
    return "\n".join([SUMMARY_BEGIN, textwrap.fill(width=116, break_long_words=False, break_on_hyphens=False, text=(
        f"The `rtx4060` profile is sized to the card: the best-of-n tax of every arm (SFT, "
        f"{work['reward_models'] - bool(judge)} reward models{judge}, one pool of {profile.eval.bon_pool} replies x "
        f"{profile.eval.prompts} prompts ranked by {work['pool_scorers']} reward models) after "
        f"**{got['bon_tax_hours']:.1f} h**, then {got['ppo_runs']} PPO runs of {got['ppo_run_hours']:.1f} h each, "
        f"the study in **{got['study_hours']:.1f} h** (8-core desktop, expected lengths; {bound:.1f} h with every "
        f"sequence at the profile's limits). Its {chosen['seeds']} reward-model seeds x {chosen['prompts']} prompts "
        f"are `budget.size_design`'s choice, the narrowest projected best-of-n interval that fits "
        f"{design['bon_hours']:g} h and {design['study_hours']:g} h; the projected {budget.WIDEST_ARM} half-width, "
        f"±{100 * chosen['half_width']:.1f} points, is from the cpu profile's variance components (a stand-in): "
        f"{more['seeds']} seeds would reach ±{100 * more['half_width']:.1f} but take {more['bon_tax_hours']:.1f} h "
        f"and {more['study_hours']:.1f} h. With so few seeds a t interval is wide (t = "
        f"{stats.t975(chosen['seeds'] - 1):.1f} at {chosen['seeds'] - 1} degrees of freedom); a user with two "
        f"evenings sets `rm.seeds` to {longer['seeds']} ({longer['bon_tax_hours']:.1f} h, "
        f"±{100 * longer['half_width']:.1f}). What made it fit, from the study-sized design (`rtx4060_study`, "
        f"{study_hours:.1f} h):")), SUMMARY_END])


def replace_block(doc: str, begin: str, end: str, text: str) -> str:
    """`doc` with the block from `begin` to `end` (markers included) replaced by `text`."""
    if begin not in doc or end not in doc:
        raise SystemExit(f"markers not found: add a line {begin!r} and a line {end!r} where the block goes")
    start, stop = doc.index(begin), doc.index(end) + len(end)
    return doc[:start] + text + doc[stop:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", metavar="PATH", help="replace the tables between the markers in PATH")
    ap.add_argument("--record-components", metavar="BON_RESULTS", type=Path,
                    help="first write docs/variance-components.json from a cpu run's bon_results.json")
    args = ap.parse_args(argv)
    if args.record_components:
        record_components(args.record_components)
    text, prose = render(), summary()
    if not args.write:
        print(text, prose, sep="\n\n")
        return 0
    path = Path(args.write)
    doc = replace_block(path.read_text(), BEGIN, END, text)
    atomic_write_text(path, replace_block(doc, SUMMARY_BEGIN, SUMMARY_END, prose))
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
