"""How small a best-of-n tax the instrument sees: known taxes put into a finished run, then the run's own analysis.

    .venv/bin/python benchmarks/sensitivity.py                       # the repository's last `make run` (cpu profile)
    .venv/bin/python benchmarks/sensitivity.py --workdir /tmp/x --write docs/sensitivity.json
    .venv/bin/python benchmarks/sensitivity.py --no-doses            # the spike-ins only (no training: a minute)

Two kinds of known effect, both on the run's own pool, seeds and prompts, analysed by bon.analyse as 03 analyses
its arms (at the headline n, paired by seed and prompt, crossed-jackknife t intervals):
- spike-ins (training-free): each seed's bf16 scores with, for k = round(q x P) of the P prompts (drawn anew per
  seed and repetition), every candidate's score replaced by one constant. Equal scores share their ranks' weights,
  so best-of-n there picks the pool's mean exactly: the gain at those prompts is 0, and over the draw the expected
  tax is exactly k / P (one draw's is the share of bf16's gain on the prompts it flattened). Repeated `--repeats`
  times per q, for the share of intervals that exclude 0 (the detection rate), the share that hold k / P, and the
  power the noncentral t gives at each interval's standard error and df (stats.t_test_power). The repetitions redraw
  only the flattened prompts: the seeds, prompts and bf16's scores are the run's, so the rates are conditional on
  this run's data, not a test of the power formula over designs (tests/test_stats.py simulates that); and the
  spiked arm is bf16 itself on the other prompts, a quieter arm than any real quantized one.
- label-noise doses: bf16 reward models trained on the first rm.control_seeds seeds with a share d of their training
  labels flipped uniformly (Coste et al. 2023's noise, rm.label_noise_on = "any"), each dose in a workdir of its own
  beside the run (the run's data and SFT model copied), through the stages' own rm and best-of-n code. Their true
  tax is not known: what they show is how a graded, realistic defect reads, beside the minimum detectable tax.
Writes no timings; run it alone all the same (the doses train 6 reward models each).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from tinyrlhf import bon
from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.results import atomic_write_json, read_json
from tinyrlhf.stats import minimum_detectable, t975, t_test_power

SPIKES = (0.05, 0.10, 0.20)
DOSES = (0.05, 0.10, 0.25)


def pool_arrays(workdir: Path) -> tuple[np.ndarray, dict, dict]:
    """The run's pool: gold (prompts x pool) and every scorer's scores (prompts x pool), from the pool file and
    bon_results.json."""
    paths = get_paths(workdir)
    result = read_json(paths.results / "bon_results.json")
    rows = [json.loads(line) for line in paths.bon_pool.read_text().splitlines() if line.strip()]
    shape = (result["prompts"], result["pool_size"])
    gold = np.array([r["gold"] for r in rows], dtype=float).reshape(shape)
    scores = {sid: np.array([r["scores"][sid] for r in rows], dtype=float).reshape(shape)
              for sid, rec in result["scorers"].items() if rec["status"] == "ok"}
    return gold, scores, result


def spike_in(gold, bf16, q: float, n: int, rng) -> dict:
    """One repetition: bf16's scores (seeds x prompts x pool) with a share q of each seed's prompts flattened."""
    spiked = bf16.copy()
    k = round(q * gold.shape[0])
    for s in range(bf16.shape[0]):
        spiked[s, rng.choice(gold.shape[0], size=k, replace=False)] = 0.0
    out = bon.analyse(gold, {"bf16": bf16, "spiked": spiked}, reference="bf16", null=None, ns=[n], headline_n=n)
    return out["arms"]["spiked"]["at_n_star"]


def spike_ins(gold, bf16, n: int, repeats: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for q in SPIKES:
        k = round(q * gold.shape[0])
        reps = [spike_in(gold, bf16, q, n, rng) for _ in range(repeats)]
        ok = [e for e in reps if e.get("tax_vs_bf16_ci95")]  # every statistic over the same repetitions
        known = k / gold.shape[0]
        halves = [(e["tax_vs_bf16_ci95"][1] - e["tax_vs_bf16_ci95"][0]) / 2 for e in ok]
        power = [t_test_power(known / (hw / t975(e["tax_df"])), e["tax_df"]) for e, hw in zip(ok, halves)]
        rows.append({"q": q, "prompts_flattened": k, "known_tax": known, "repeats": len(reps),
                     "with_interval": len(ok), "tax_mean": float(np.mean([e["tax_vs_bf16"] for e in ok])),
                     "half_width_mean": float(np.mean(halves)),
                     "detected": float(np.mean([e["tax_vs_bf16_ci95"][0] > 0 for e in ok])),
                     "covered": float(np.mean([e["tax_vs_bf16_ci95"][0] <= known <= e["tax_vs_bf16_ci95"][1]
                                               for e in ok])),
                     "predicted_power": float(np.mean(power)),
                     "minimum_detectable": float(np.mean([minimum_detectable(e["tax_vs_bf16_ci95"], e["tax_df"])
                                                          for e in ok]))})
    return rows


def dose_workdir(workdir: Path, out: Path) -> Path:
    """A workdir beside the run holding its data, base and SFT models (copied: the doses never write into the run)."""
    src, dst = get_paths(workdir), get_paths(out).make()
    shutil.copytree(src.data, dst.data, dirs_exist_ok=True)
    for folder in (src.base, src.sft):
        shutil.copytree(folder, get_paths(out).models / folder.name, dirs_exist_ok=True)
    for kind in ("data_stats", "sft"):
        shutil.copy2(src.result(kind), dst.result(kind))
    return out


def label_noise_dose(workdir: Path, dose: float, seeds: list) -> dict:
    """bf16 and noisy reward models of `seeds` with `dose` of the labels flipped uniformly, then best-of-n on the
    same pool (the stages' own code; the pool is sampled again with the run's seed: the same candidates)."""
    from tinyrlhf.stages import run_bon, run_rm

    profile = get_profile("cpu", overrides={"rm.precisions": ["bf16"], "rm.seeds": seeds, "rm.null_arm": False,
                                            "rm.noisy_arm": True, "rm.control_seeds": 0, "rm.label_noise": dose,
                                            "rm.label_noise_on": "any", "eval.serve_bits": []})
    paths = get_paths(workdir)
    run_rm(profile, paths, progress=False)
    result = run_bon(profile, paths, progress=False)
    e = result["arms"]["noisy"]["at_n_star"] or {}
    return {"dose": dose, "seeds": seeds, "n": result["n_star"], "tax": e.get("tax_vs_bf16"),
            "tax_ci95": e.get("tax_vs_bf16_ci95"), "gain_diff": e.get("gain_diff_vs_bf16"),
            "gain_diff_ci95": e.get("gain_diff_vs_bf16_ci95"), "per_seed_tax": e.get("per_seed_tax"),
            "sign_flip_p": e.get("sign_flip_p"),
            "minimum_detectable": minimum_detectable(e.get("tax_vs_bf16_ci95"), e.get("tax_df")),
            "detected": bool(e.get("tax_vs_bf16_ci95") and e["tax_vs_bf16_ci95"][0] > 0)}


def _print(spikes: list[dict], doses: list[dict], run_mdt: float | None) -> None:
    print(f"spike-ins at n = headline ({len(spikes) and spikes[0]['repeats']} repetitions each); "
          f"the run's served int4 minimum detectable tax: {run_mdt:.1%}" if run_mdt else "")
    print(f"{'known tax':>10} {'mean tax':>9} {'± half':>7} {'detected':>9} {'predicted':>10} {'covered':>8} {'MDT':>6}")
    for r in spikes:
        print(f"{r['known_tax']:>10.1%} {r['tax_mean']:>+9.1%} {r['half_width_mean']:>7.1%} {r['detected']:>9.0%} "
              f"{r['predicted_power']:>10.0%} {r['covered']:>8.0%} {r['minimum_detectable']:>6.1%}")
    for d in doses:
        ci = d["tax_ci95"] or [float("nan")] * 2
        print(f"label noise {d['dose']:.0%} on seeds {d['seeds']}: tax {d['tax']:+.1%} [{ci[0]:+.1%}, {ci[1]:+.1%}], "
              f"{'detected' if d['detected'] else 'not detected'}, minimum detectable {d['minimum_detectable']:.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parents[1],
                        help="a finished cpu-profile run (default: the repository root)")
    parser.add_argument("--repeats", type=int, default=200, help="spike-in repetitions per share (default 200)")
    parser.add_argument("--no-doses", action="store_true", help="the spike-ins only: no reward model is trained")
    parser.add_argument("--write", type=Path, help="the numbers as JSON (with the run's commit and manifest)")
    args = parser.parse_args(argv)
    gold, scores, result = pool_arrays(args.workdir)
    seeds = result["manifest"]["config"]["rm"]["seeds"]
    bf16 = np.stack([scores[f"bf16/seed{s}"] for s in seeds])
    spikes = spike_ins(gold, bf16, result["n_star"], args.repeats, seed=0)
    control = seeds[: result["manifest"]["config"]["rm"]["control_seeds"] or len(seeds)]
    doses = [] if args.no_doses else [
        label_noise_dose(dose_workdir(args.workdir, args.workdir / "sensitivity" / f"dose-{d:.2f}"), d, control)
        for d in DOSES]
    served = (result["arms"].get("served-int4") or {}).get("at_n_star") or {}
    run_mdt = minimum_detectable(served.get("tax_vs_bf16_ci95"), served.get("tax_df"))
    _print(spikes, doses, run_mdt)
    if args.write:
        atomic_write_json(args.write, {"what": __doc__.split("\n\n")[0], "headline_n": result["n_star"],
                                       "run": {"commit": result["manifest"].get("git_commit"),
                                               "profile": result["manifest"].get("profile"),
                                               "served_int4_minimum_detectable": run_mdt},
                                       "spike_ins": spikes, "label_noise_doses": doses})
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
