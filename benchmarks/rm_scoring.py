"""CPU scoring throughput of the trained reward models, per precision, as ratios to bf16.

PPO scores every rollout on the CPU-resident reward model, so this is the number that decides whether a quantized
reward model slows PPO down. Run after 03_Reward_Modeling (or `make run`):

    .venv/bin/python benchmarks/rm_scoring.py [--workdir DIR] [--pairs 256] [--repeats 3] [--batch 32]

Prints pairs per second (best of the repeats, after one warm-up pass) and the ratio to bf16.
"""

from __future__ import annotations

import argparse
import time

from tinyrlhf.config import get_paths, get_profile
from tinyrlhf.data import data_files, read_pairs
from tinyrlhf.reward import PRECISION_FILE, load_reward_model, rm_dir, score_texts


def throughput(model, tokenizer, pairs, repeats: int, batch: int) -> float:
    prompts = [p.prompt for p in pairs] * 2
    replies = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    score_texts(model, tokenizer, prompts[:batch], replies[:batch], batch_size=batch)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        score_texts(model, tokenizer, prompts, replies, batch_size=batch)
        best = min(best, time.perf_counter() - t0)
    return len(pairs) / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="artifacts folder (default: TINYRLHF_WORKDIR or the repository root)")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    profile, paths = get_profile(), get_paths(args.workdir)
    pairs = read_pairs(data_files(paths)["test"])
    pairs = (pairs * (args.pairs // max(len(pairs), 1) + 1))[: args.pairs]
    rates = {}
    for precision in profile.rm.precisions:
        if not (rm_dir(paths, precision) / PRECISION_FILE).exists():
            print(f"{precision}: no trained model in {rm_dir(paths, precision)}; run 03_Reward_Modeling first")
            continue
        model, info = load_reward_model(rm_dir(paths, precision), profile=profile, device="cpu")
        rates[precision] = throughput(model, info["tokenizer"], pairs, args.repeats, args.batch)
        del model
    if not rates:
        return 1
    ref = rates.get("bf16")
    print(f"\nCPU reward scoring, {args.pairs} pairs, batch {args.batch}, best of {args.repeats}")
    print(f"{'precision':<10} {'pairs/s':>10} {'vs bf16':>8}")
    for precision, rate in rates.items():
        ratio = f"{rate / ref:.2f}x" if ref else "-"
        print(f"{precision:<10} {rate:>10.1f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
