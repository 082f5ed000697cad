"""The command line: ``tinyrlhf run|plots|tables|env|preflight`` (also ``python -m tinyrlhf``).

    tinyrlhf run                                  # every stage, default profile
    tinyrlhf run rm bon ppo --profile cpu --set ppo.steps=20 --set 'rm.seeds=[0,1,2]'
    tinyrlhf plots results/ paper/figures/
    tinyrlhf env

The stages are the same functions the notebooks call (tinyrlhf.stages); a finished stage is reused while its
settings are unchanged, unless --force.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from . import distributed
from .config import (
    PROFILES,
    SECTIONS,
    TOP_LEVEL,
    ConfigError,
    get_paths,
    get_profile,
    resolve_device,
)

log = logging.getLogger("tinyrlhf")


def parse_assignment(text: str) -> tuple[str, object]:
    """"section.field=value" -> (key, value); the value is read as JSON (numbers, lists, true/false) or else
    taken as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: write section.field=value, e.g. --set ppo.steps=20")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def settings_help() -> str:
    """Every setting with its `cpu` default, for --help."""
    from .stages import STAGES

    cpu = PROFILES["cpu"]
    lines = ["stages (in order):"]
    lines += [f"  {name:<5} {stage.does} ({stage.notebook}.ipynb)" for name, (stage, _) in STAGES.items()]
    lines += ["", "settings (--set section.field=value; defaults of the cpu profile):"]
    lines += [f"  {name} = {getattr(cpu, name)!r}" for name in TOP_LEVEL]
    for section in SECTIONS:
        for f in dataclasses.fields(SECTIONS[section]):
            lines.append(f"  {section}.{f.name} = {json.dumps(getattr(getattr(cpu, section), f.name))}")
    lines += ["", f"profiles: {', '.join(PROFILES)} (TINYRLHF_PROFILE; default rtx4060 with CUDA, else cpu)"]
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    # the stage list the help names is the one `run` runs (settings_help loads it too)
    from .stages import STAGES

    parser = argparse.ArgumentParser(prog="tinyrlhf", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run pipeline stages", epilog=settings_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("stages", nargs="*", metavar="STAGE", help=f"{', '.join(STAGES)} (default: all, in order)")
    run.add_argument("--profile", choices=sorted(PROFILES), help="default: TINYRLHF_PROFILE, else by CUDA")
    run.add_argument("--workdir", help="artifacts folder (default: TINYRLHF_WORKDIR or the repository root)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="override a setting (repeatable); the value is JSON or a plain string")
    run.add_argument("--force", action="store_true", help="recompute stages whose outputs exist")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings and errors only")
    plots = sub.add_parser("plots", help="redraw every figure from the result files alone")
    plots.add_argument("results", help="folder holding rm_results.json / ppo_experiment_results.json")
    plots.add_argument("out", nargs="?", help="where the figures go (default: RESULTS/figures)")
    plots.add_argument("--style", choices=["notebook", "column", "page"], default="notebook",
                       help="notebook (default), column (3.3 in) or page (7 in): paper figures, every text >= 8 pt")
    env = sub.add_parser("env", help="environment report, problems with fixes, memory verdicts")
    env.add_argument("--profile", choices=sorted(PROFILES))
    env.add_argument("--workdir")
    tables = sub.add_parser("tables", help="every results table as CSV and LaTeX (booktabs), from the JSON files")
    tables.add_argument("results", help="folder holding rm_results.json / bon_results.json / ppo_experiment_results.json")
    tables.add_argument("out", nargs="?", help="where the tables go (default: RESULTS/tables)")
    pre = sub.add_parser("preflight", help="every stage's heaviest phase at the profile's sizes, a few steps each: "
                                           "minutes before the night (results/preflight.json)")
    pre.add_argument("--profile", choices=sorted(PROFILES), help="default: TINYRLHF_PROFILE, else by CUDA")
    pre.add_argument("--workdir", help="its stages run in WORKDIR/preflight; the verdicts go to WORKDIR/results")
    pre.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                     help="a setting for every stage (e.g. base.model=FOLDER)")
    pre.add_argument("--steps", type=int, default=2, help="training steps per model (default 2)")
    return parser


def _run(args) -> int:
    from .stages import STAGES, run

    overrides = dict(parse_assignment(s) for s in args.overrides)
    if distributed.launched():  # one job at a time: every rank must train the same model at the same moment
        overrides["workers"] = 1
    profile = get_profile(args.profile, overrides=overrides)
    paths = get_paths(args.workdir)
    names = args.stages or list(STAGES)
    distributed.check_batches(profile, names)
    distributed.check_launch(names, profile)
    distributed.init(resolve_device(profile))
    log.info("profile %s, stages %s, artifacts under %s, %d process(es)", profile.name, " ".join(names), paths.root,
             distributed.world_size())
    results = run(names, profile, paths, force=args.force, progress=not args.quiet and distributed.is_main())
    for name, result in results.items():
        what = "reused" if result.get("reused") else "computed"
        if distributed.is_main():
            print(f"{name}: {what} -> {paths.result(STAGES[name][0].kind)}")
    return 0


def _plots(args) -> int:
    from .plots import draw_all

    for name, files in draw_all(args.results, args.out, args.style).items():
        print(f"{name}: {', '.join(str(p) for p in files)}")
    return 0


def _env(args) -> int:
    from . import env, memory

    profile, paths = get_profile(args.profile), get_paths(args.workdir)
    report = env.environment_report(paths)
    print(env.report_table(report).to_string(index=False))
    problems = env.problems(report, profile)
    print("\nproblems:" if problems else "\nno problems for the", profile.name, "profile")
    for p in problems:
        print(f"  - {p['what']}: {p['why']}. Fix: {p['fix']}")
    gpu, ram = env.capacities(report)  # the card's free memory, not its size
    verdicts = memory.stage_verdicts(profile, gpu_bytes=gpu, ram_bytes=ram)
    for v in verdicts:
        print(f"  {v['stage']:<9} {v['verdict']:<13} {v['reason']}")
    if profile.device != "cpu":  # the time budget of a card profile, its speeds measured when a card is here
        from . import calibrate, display

        prediction = calibrate.prediction_here(profile, report)
        print(f"\n{profile.name} profile " + "\n  ".join(calibrate.describe(prediction)))
        print(display.budget_table(prediction["rows"], prediction["bound"]).to_string(index=False))
        print(display.milestone_words(prediction["milestones"], prediction["bound_milestones"]))
    print(f"wrote {env.write_environment(report, paths, profile, verdicts)}")
    return 0


def _tables(args) -> int:
    from .tables import write_all

    for name, files in write_all(args.results, args.out).items():
        print(f"{name}: {', '.join(str(p) for p in files)}")
    return 0


def _preflight(args) -> int:
    from . import preflight

    overrides = dict(parse_assignment(s) for s in args.overrides)
    profile, paths = get_profile(args.profile, overrides=overrides), get_paths(args.workdir).make()
    out = preflight.run(profile, paths, overrides=overrides, steps=args.steps)
    for r in out["stages"]:
        peak = "" if not r.get("peak_bytes") else f"peak {r['peak_bytes'] / 2**30:.2f} GiB " \
            f"(estimate {r['estimate_bytes'] / 2**30:.2f})"
        secs = "" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        print(f"  {r['stage']:<5} {r['verdict']:<22} {secs:>6}  {peak}  {r['reason']}")
    print(preflight.sentence(out))
    print(f"wrote {paths.results / preflight.FILE}")
    return 0 if out["ready"] else 1


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    rank = f"[rank {distributed.rank()}] " if distributed.launched() else ""
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format=f"%(asctime)s {rank}%(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return {"run": _run, "plots": _plots, "env": _env, "tables": _tables, "preflight": _preflight}[args.command](args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # our errors say what to do; no traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
