"""The time budget checked where it can run (issue 25, item 1): tinyrlhf.budget's prediction of the `cpu` profile's
stage times on this machine, calibrated by its own CPU measurement, beside the stage times a `make run` recorded.

Calibration, alone on the machine, one thread per job as the cpu profile runs them (two at a time):
- calibrate.cpu_calibration: a training step of each kind, a decode step, a scoring pass, random weights at the
  cpu profile's size (what 00_Setup times on a card), on the threads the profile gives each kind of work;
- fixed seconds per job, which a CPU run of minutes cannot ignore: 02's own code in a fresh process (as a
  notebook's kernel runs it) at the least work (2 pre-training steps, 1 SFT step, 1 pair and 1 prompt evaluated),
  one real reward-model job (2 steps, then its test pairs) and one real PPO run (1 update) from the finished
  run's models, each less the work the budget counts for it; loading a reward model for the best-of-n scorers.
Then budget.predict at the lengths the data stage measured (data_stats.json) against each stage's recorded
`stage_seconds`. Goal: within +-30% per stage.

Usage: .venv/bin/python benchmarks/budget_validation.py [--workdir . [more runs]] [--trainer-steps]
           [--repeats 3] [--write-json docs/budget-validation.json]
Run it alone (measured timings), after a fresh `make run` in each workdir (no stage reused) of the same code. A
stage's time varies from run to run (02: 32 to 39 s) and so does a calibration: several of each give the spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable without installing the package

from tinyrlhf import budget, calibrate, data
from tinyrlhf.base_model import load_tokenizer
from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.cpu import cpu_kind, flags
from tinyrlhf.jobs import torch_threads
from tinyrlhf.results import atomic_write_json, read_json

STAGES = {"sft": ["sft"], "rm": ["rm"], "bon": ["bon"], "ppo": ["ppo", "eval"]}  # result file <- budget rows


def _train_rm_forever(workdir: str) -> None:
    """A rival reward-model job (spawned): what the profile's other worker does while one job is timed."""
    profile, paths = get_profile("cpu"), get_paths(workdir)
    with torch_threads(profile.threads or 1), tempfile.TemporaryDirectory() as tmp:
        _train_rm(profile, paths, 1_000_000, Path(tmp), data.read_pairs(paths.data_file("train")),
                  load_tokenizer(paths.sft_merged))


def _train_rm(profile, paths, steps: int, out: Path, train, tok) -> float:
    """One bf16 reward model of `steps` steps at the profile's settings, saved under `out`; its training seconds."""
    from tinyrlhf.reward import train_reward_model

    r = profile.rm
    return train_reward_model(train, init_path=str(paths.sft_merged), tokenizer=tok, precision="bf16",
                              out_dir=out / "rm",
                              batch_size=r.batch_size, lr=r.lr, max_steps=steps, lora_r=r.lora_r,
                              lora_alpha=r.lora_alpha, target_modules=r.target_modules,
                              max_length=profile.data.max_prompt_tokens + profile.data.max_response_tokens + 1,
                              seed=0, profile=profile)["train_seconds"]


def predicted_seconds(profile, machine: budget.Machine, lengths, cal: budget.Calibration) -> dict:
    """The budget's seconds per row key ("sft", "rm", "bon", "ppo", "eval") for `profile` on this machine."""
    return {row["key"]: row["hours"] * 3600 for row in budget.predict(profile, machine, lengths=lengths,
                                                                        calibration=cal)}


def _least_sft_stage(profile):
    """The cpu profile's 02 at the least work it does: what is left of its time is fixed seconds."""
    b, s, e = profile.base, profile.sft, profile.eval
    return dataclasses.replace(profile, base=dataclasses.replace(b, pretrain_steps=2),
                               sft=dataclasses.replace(s, max_steps=1, eval_pairs=1, sample_prompts=1),
                               eval=dataclasses.replace(e, prompts=1, samples=1))


def _time_sft_stage(workdir: str) -> float:
    """(Spawned: a fresh process, as 02's kernel is.) 02's compute at the least work, in a copy of `workdir`'s
    prepared data and tokenizer; its seconds."""
    from tinyrlhf import stages  # what 02 has imported before its stage runs

    source = get_paths(workdir)
    with tempfile.TemporaryDirectory() as tmp:
        paths = get_paths(tmp)
        paths.make()
        shutil.copytree(source.data, paths.data, dirs_exist_ok=True)
        paths.base.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(source.base / name, paths.base / name)
        shutil.copy2(source.result("data_stats"), paths.result("data_stats"))
        t0 = time.perf_counter()
        stages._fine_tune(_least_sft_stage(get_profile("cpu")), paths, True, False)
        return time.perf_counter() - t0


def sft_overhead(profile, paths, cal: budget.Calibration, machine: budget.Machine, lengths) -> float:
    """02's fixed seconds: its code at the least work in a fresh process (imports and first uses, building the
    trainers, merging and saving, loading each model), less the work the budget counts for it."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        seconds = pool.submit(_time_sft_stage, str(paths.root)).result()
    least = _least_sft_stage(profile)
    counted = predicted_seconds(least, machine, lengths, dataclasses.replace(cal, job_overhead_s={}))["sft"]
    return max(0.0, seconds - counted)


def base_trainer_mfu(profile, paths, cal: budget.Calibration, machine: budget.Machine, lengths,
                     extra_steps: int = 50) -> float:
    """The cpu profile's base-model pre-training MFU from real Trainer steps (base_model.pretrain, 2 and
    2 + `extra_steps` steps, on the notebook's threads), as rm_trainer_mfu does for the reward models: at 0.9 M
    parameters a step's own work (collation, the optimizer over every weight, logging) is a share of it."""
    import psutil

    from tinyrlhf.base_model import pretrain
    from tinyrlhf.stages import context_needed, pretraining_texts

    b = profile.base
    tok = load_tokenizer(paths.base)
    texts = pretraining_texts(profile, paths, tok.eos_token)

    def seconds(steps):
        with tempfile.TemporaryDirectory() as tmp:
            return pretrain(texts, tok, out_dir=Path(tmp), settings=dataclasses.replace(b, pretrain_steps=steps),
                            max_len=profile.data.max_prompt_tokens + profile.data.max_response_tokens,
                            seed=profile.seed, context=context_needed(profile))["seconds"]

    def counted(steps):
        one = dataclasses.replace(profile, base=dataclasses.replace(b, pretrain_steps=steps))
        return predicted_seconds(one, machine, lengths, cal)["sft"]

    with torch_threads(psutil.cpu_count(logical=False) or 1):  # 02 trains in the notebook's process
        seconds(2)  # warm-up
        short, long = seconds(2), seconds(2 + extra_steps)
    return cal.mfu["base"] * (counted(2 + extra_steps) - counted(2)) / (long - short)


def rm_trainer_mfu(profile, paths, cal: budget.Calibration, machine: budget.Machine, lengths,
                   extra_steps: int = 100) -> float:
    """The reward models' MFU from real RewardTrainer steps: a job of 2 steps and one of 2 + `extra_steps`, timed,
    their difference against the budget's seconds for those steps at the calibrated MFU. The calibration's bare
    forward/backward leaves out the trainer's own work per step (collation, LoRA's 28 small modules' optimizer
    steps, logging), which at the cpu profile's size is a share of a step (measured on an AMX CPU: 75 ms per real
    step, 15% over the bare step). At Qwen2.5-0.5B's size a step takes seconds and that share is small. The stage
    runs `workers` jobs at once, so the steps are timed with workers - 1 rival jobs beside them (on that CPU two at
    once ran 20% slower each than one alone)."""
    import multiprocessing as mp

    r = profile.rm
    train, tok = data.read_pairs(paths.data_file("train")), load_tokenizer(paths.sft_merged)

    def seconds(steps):
        with tempfile.TemporaryDirectory() as tmp:
            return _train_rm(profile, paths, steps, Path(tmp), train, tok)

    def counted(steps):  # the budget's seconds for one reward model of `steps` steps
        one = dataclasses.replace(profile, rm=dataclasses.replace(r, max_steps=steps, seeds=(0,)), workers=1)
        return predicted_seconds(one, machine, lengths, cal)["rm"] / budget.work_counts(one)["reward_models"]

    rivals = [mp.get_context("spawn").Process(target=_train_rm_forever, args=(str(paths.root),), daemon=True)
              for _ in range(max(profile.workers, 1) - 1)]
    for rival in rivals:
        rival.start()
    try:
        seconds(2)  # warm-up: the first job in a process pays one-off costs; the rivals start meanwhile
        time.sleep(5 if rivals else 0)
        short, long = seconds(2), seconds(2 + extra_steps)
    finally:
        for rival in rivals:
            rival.terminate()
            rival.join()
    return cal.mfu["rm"] * (counted(2 + extra_steps) - counted(2)) / (long - short)


def job_overheads(profile, paths, cal: budget.Calibration, machine: budget.Machine, lengths) -> dict:
    """Seconds per job beyond the work the budget counts: a real job of each kind, timed, less that work."""
    from tinyrlhf import ppo as ppo_lib
    from tinyrlhf.reward import evaluate_reward_model, load_reward_model

    r, p = profile.rm, profile.ppo
    tok = load_tokenizer(paths.sft_merged)
    train, test = data.read_pairs(paths.data_file("train")), data.read_pairs(paths.data_file("test"))[: r.eval_pairs]
    one = dataclasses.replace(profile, rm=dataclasses.replace(r, max_steps=2, seeds=(0,)), workers=1,
                              ppo=dataclasses.replace(p, steps=1), eval=dataclasses.replace(profile.eval, prompts=1))
    counted = predicted_seconds(one, machine, lengths, cal)
    models = budget.work_counts(one)["reward_models"]
    out = {"sft": sft_overhead(profile, paths, cal, machine, lengths)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _train_rm(profile, paths, 2, Path(tmp), train, tok)
        model, _ = load_reward_model(Path(tmp) / "rm", device="cpu", cpu_dtype=r.cpu_dtype)
        evaluate_reward_model(model, tok, test)
        out["rm"] = max(0.0, time.perf_counter() - t0 - counted["rm"] / models)
        t0 = time.perf_counter()
        load_reward_model(paths.rm("bf16", r.seeds[0]), device="cpu", cpu_dtype=r.cpu_dtype)
        out["bon"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ppo_lib.train_ppo(paths.data_file("train"), out_dir=Path(tmp) / "ppo", sft_path=paths.sft_merged,
                          rm_path=paths.rm("bf16", r.seeds[0]), profile=one, ppo_batch=p.ppo_batch,
                          mini_batch=p.mini_batch, micro_batch=p.micro_batch, rollout_chunk=p.rollout_chunk,
                          ppo_epochs=p.ppo_epochs, ppo_lr=p.ppo_lr, max_new=p.max_new, clip=p.clip,
                          kl_coef=p.kl_coef, steps=1, lr_scheduler=p.lr_scheduler,
                          missing_eos_penalty=p.missing_eos_penalty, temperature=p.temperature, lora_r=p.lora_r,
                          lora_alpha=p.lora_alpha, target_modules=p.target_modules, seed=0)
        runs = budget.work_counts(one)["ppo_runs"]
        out["ppo"] = max(0.0, time.perf_counter() - t0 - (counted["ppo"]) / runs)
    return out


def calibrated(profile, paths, trainer_steps: bool):
    """(machine, calibration, lengths): this CPU measured as the docstring says."""
    machine, cal = calibrate.cpu_calibration(profile)
    with torch_threads(profile.threads or 1):
        lengths = budget.lengths_from_stats(profile, read_json(paths.result("data_stats")))
        if trainer_steps:
            bare = cal.mfu["rm"]
            cal = dataclasses.replace(cal, mfu=cal.mfu | {"rm": rm_trainer_mfu(profile, paths, cal, machine, lengths)})
            print(f"reward models' MFU: {bare:.3f} from bare steps, {cal.mfu['rm']:.3f} from RewardTrainer's steps")
            bare = cal.mfu["base"]
            cal = dataclasses.replace(cal, mfu=cal.mfu | {"base": base_trainer_mfu(profile, paths, cal, machine,
                                                                                   lengths)})
            print(f"base pre-training MFU: {bare:.3f} from bare steps, {cal.mfu['base']:.3f} from Trainer's steps")
        cal = dataclasses.replace(cal, job_overhead_s=job_overheads(profile, paths, cal, machine, lengths))
    return machine, cal, lengths


def compared(profile, machine, cal, lengths, runs: list) -> list[dict]:
    """The prediction against each run's recorded stage seconds."""
    rows = {r["key"]: r for r in budget.predict(profile, machine, lengths=lengths, calibration=cal)}
    table = []
    for run in runs:
        for stage, keys in STAGES.items():
            measured = read_json(run.result(stage))["manifest"]["timings"]["stage_seconds"]
            predicted = sum(rows[k]["hours"] for k in keys) * 3600
            table.append({"run": str(run.root), "stage": stage, "predicted_s": predicted, "measured_s": measured,
                          "ratio": predicted / measured, "within_30pct": abs(predicted / measured - 1) <= 0.30})
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", nargs="+", default=["."],
                    help="workdirs of fresh `make run`s of the same profile; the first one's models are timed")
    ap.add_argument("--write-json", metavar="PATH")
    ap.add_argument("--trainer-steps", action="store_true",
                    help="calibrate the reward models' and the base model's speeds on real trainer steps "
                         "(rm_trainer_mfu, base_trainer_mfu)")
    ap.add_argument("--repeats", type=int, default=1, help="calibrate this many times: the spread of the ratios")
    args = ap.parse_args(argv)
    profile, runs = get_profile("cpu"), [get_paths(w) for w in args.workdir]
    calibrations, tables = [], []
    for _ in range(args.repeats):
        machine, cal, lengths = calibrated(profile, runs[0], args.trainer_steps)
        calibrations.append(dataclasses.asdict(cal))
        tables.append(compared(profile, machine, cal, lengths, runs))
        print(f"calibration: {json.dumps(calibrations[-1], default=str)}")
    print("| run | stage | predicted s | measured s | predicted / measured |\n|---|---|---|---|---|")
    for i, row in enumerate(tables[0]):
        ratios = " / ".join(f"{t[i]['ratio']:.2f}" for t in tables)
        predicted = " / ".join(f"{t[i]['predicted_s']:.0f}" for t in tables)
        print(f"| {row['run']} | {row['stage']} | {predicted} | {row['measured_s']:.0f} | {ratios} |")
    every = [r for t in tables for r in t]
    print(f"within +-30%: {sum(r['within_30pct'] for r in every)} of {len(every)} (stage, run, calibration)")
    if args.write_json:
        atomic_write_json(Path(args.write_json), {
            "date": datetime.date.today().isoformat(), "lengths": dataclasses.asdict(lengths),
            "calibration": calibrations[0], "machine": dataclasses.asdict(machine), "stages": tables[0],
            "repeats": [{"calibration": c, "stages": t} for c, t in zip(calibrations, tables)],
            "ratio_range": {stage: [min(r["ratio"] for r in every if r["stage"] == stage),
                                    max(r["ratio"] for r in every if r["stage"] == stage)] for stage in STAGES},
            "rm_calibrated_on": "RewardTrainer steps" if args.trainer_steps else "bare steps",
            "base_calibrated_on": "Trainer steps" if args.trainer_steps else "bare steps",
            "cpu_kind": cpu_kind(flags())})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
