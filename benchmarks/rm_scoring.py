"""CPU scoring throughput of reward models per precision, as tokens per second and ratios to bf16, alone and with a
second process competing for the cores.

PPO scores every rollout on the CPU-resident reward model, so this number decides whether a quantized reward model
slows PPO down. Two sizes:

    .venv/bin/python benchmarks/rm_scoring.py --size cpu [--workdir DIR]   # the cpu profile's trained reward models
    .venv/bin/python benchmarks/rm_scoring.py --size real                   # Qwen2.5-0.5B's architecture, random weights

Each precision scores the same batch of random token ids (`--batch` sequences of `--tokens` tokens, no padding) in
eval mode without gradients; best of `--repeats` after one warm-up pass. int8 is measured through both CPU matmuls
(reward.pin_int8_matmul: "dequantized", the pipeline's default, and bitsandbytes' eval-mode LLM.int8), with the
largest score difference between them. `--threads` sets torch's threads for the scoring (0: torch's default);
`--contend` repeats the measurement beside a process that multiplies matrices on `--contend-threads` threads, as
the GPU process's own threads would. `--rollouts` also scores a rollout-shaped batch (left-padded queries of
random length up to `--tokens` minus 128, right-padded replies up to 128 tokens) through the PPO wrapper, as one padded
batch and in length-sorted padding-free groups (reward.CPURewardModel), counting real tokens only. Run it alone.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

from tinyrlhf.reward import pin_int8_matmul

PRECISIONS = ("bf16", "int8", "int4")


def _compete(threads: int, stop) -> None:
    torch.set_num_threads(threads)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def tokens_per_second(model, batch: int, tokens: int, vocab: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Tokens per second (best of `repeats` after a warm-up) and the scores, in the mode the model is in."""
    ids = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        scores = model(input_ids=ids, attention_mask=mask).logits.float().squeeze(-1)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            best = min(best, time.perf_counter() - t0)
    return batch * tokens / best, scores


def models(size: str, workdir: str | None):
    """(precision, model, vocab) for each precision: the trained cpu-profile reward models, or the real
    architecture's backbone at each precision (random weights, built like a reward model from its SFT model)."""
    from tinyrlhf.config import get_paths
    from tinyrlhf.reward import load_backbone, load_reward_model

    if size == "cpu":
        paths = get_paths(workdir)
        for precision in PRECISIONS:
            if not (paths.rm(precision) / "adapter_config.json").exists():
                print(f"{precision}: no trained reward model in {paths.rm(precision)}; run 03_Reward_Modeling first")
                continue
            model, _ = load_reward_model(paths.rm(precision), device="cpu")
            yield precision, model, model.config.vocab_size
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_size_memory import build_model_folder

    folder = Path(workdir or "/tmp/real-size-scoring") / "qwen2.5-0.5b-architecture"
    if not (folder / "config.json").exists():
        print(f"building the Qwen2.5-0.5B architecture (random weights) in {folder} ...", flush=True)
        build_model_folder(folder)
    for precision in PRECISIONS:
        model, _ = load_backbone(str(folder), precision, pad_token_id=0, device="cpu")
        model.eval()
        yield precision, model, 2000  # the folder's tokenizer has 2,000 tokens


def rollout_batch(batch: int, tokens: int, vocab: int, pad: int) -> tuple[torch.Tensor, int]:
    """Left-padded queries and right-padded replies of random lengths, as TRL's rollouts hand them to the RM."""
    g = torch.Generator().manual_seed(1)
    reply = min(128, tokens // 4)
    context = tokens - reply
    ids = torch.randint(1, vocab, (batch, tokens), generator=g)
    for i in range(batch):
        q = int(torch.randint(context // 4, context + 1, (1,), generator=g))
        r = int(torch.randint(8, reply + 1, (1,), generator=g))
        ids[i, : context - q] = pad
        ids[i, context + r:] = pad
    return ids, context


def rollout_tokens_per_second(model, ids, context: int, pad: int, repeats: int) -> tuple[float, float, float]:
    """Real tokens per second of a rollout batch scored whole and in padding-free groups, and the largest score
    difference between the two."""
    from trl.experimental.utils import get_reward

    from tinyrlhf.reward import CPURewardModel

    real = int((ids != pad).sum())
    out = []
    for tokens_per_batch in (0, CPURewardModel(model).tokens_per_batch):
        wrapper = CPURewardModel(model, "cpu", tokens_per_batch=tokens_per_batch)
        scores = get_reward(wrapper, ids, pad, context)[1]
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            get_reward(wrapper, ids, pad, context)
            best = min(best, time.perf_counter() - t0)
        out.append((real / best, scores))
    return out[0][0], out[1][0], (out[0][1] - out[1][1]).abs().max().item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("cpu", "real"), default="cpu")
    ap.add_argument("--workdir", help="cpu: the pipeline's artifacts; real: where the model folder goes")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for scoring (0: torch's default)")
    ap.add_argument("--contend", action="store_true", help="also measure beside a competing process")
    ap.add_argument("--contend-threads", type=int, default=2)
    ap.add_argument("--rollouts", action="store_true", help="also score a rollout-shaped padded batch")
    ap.add_argument("--write-json", metavar="PATH", help="add this run's figures to PATH (docs/rm-scoring.json), "
                    "keyed by threads and rival threads; tinyrlhf.budget reads it")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, padding = [], []
    for precision, model, vocab in models(args.size, args.workdir):
        matmuls = ("dequantized", "llm.int8") if precision == "int8" else (None,)
        for matmul in matmuls:
            name = f"int8 ({matmul})" if matmul else precision
            if matmul:
                pin_int8_matmul(model, matmul)
            alone, scores = tokens_per_second(model, args.batch, args.tokens, vocab, args.repeats)
            contended = measure_contended(model, args, vocab) if args.contend else None
            if matmul == "llm.int8":
                print(f"int8: LLM.int8 scores differ from the dequantized matmul's by at most "
                      f"{(scores - rows[-1][3]).abs().max().item():.4f} (scores span "
                      f"{rows[-1][3].min().item():.3f} to {rows[-1][3].max().item():.3f})")
            rows.append((name, alone, contended, scores))
            if args.rollouts:
                padding.append((name, *rollout_tokens_per_second(model, *rollout_batch(
                    args.batch * 2, args.tokens, vocab, model.config.pad_token_id), model.config.pad_token_id,
                    repeats=args.repeats)))
        del model
    if not rows:
        return 1
    ref = {p: a for p, a, _, _ in rows}.get("bf16")
    print(f"\nCPU reward scoring ({args.size}), batch {args.batch} x {args.tokens} tokens, best of {args.repeats}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'precision':<26} {'tokens/s':>10} {'vs bf16':>8}" + (f" {'contended':>10} {'slowdown':>9}"
                                                                 if args.contend else ""))
    for precision, alone, contended, _ in rows:
        line = f"{precision:<26} {alone:>10.0f} {(f'{alone / ref:.2f}x' if ref else '-'):>8}"
        if contended is not None:
            line += f" {contended:>10.0f} {alone / contended:>8.1f}x"
        print(line)
    if args.write_json:
        write_json(Path(args.write_json), args, rows, padding)
    for name, whole, grouped, diff in padding:
        if name == padding[0][0]:
            print(f"\nrollout-shaped batch ({args.batch * 2} rows), real tokens/s: {'precision':<18} "
                  f"{'padded':>8} {'grouped':>8} {'speed-up':>9} {'max |score diff|':>17}")
        print(f"{'':<50}{name:<18} {whole:>8.0f} {grouped:>8.0f} {grouped / whole:>8.2f}x {diff:>17.2g}")
    return 0


def write_json(path: Path, args, rows, padding) -> None:
    """Merge this run into `path`: tokens/s per precision alone and beside the rival, this CPU's float32
    matrix-multiply speed on the same threads (tinyrlhf.budget's yardstick between machines)."""
    import json
    import platform

    from tinyrlhf.budget import cpu_gemm_gflops
    from tinyrlhf.env import cpu_facts
    from tinyrlhf.results import atomic_write_json

    threads = torch.get_num_threads()
    data = json.loads(path.read_text()) if path.exists() else {}
    key = f"threads={threads}" + (f", rival threads={args.contend_threads}" if args.contend else "")
    data.setdefault("runs", {})[key] = {
        "size": args.size, "batch": args.batch, "tokens": args.tokens, "threads": threads,
        "rival_threads": args.contend_threads if args.contend else None, "repeats": args.repeats,
        "gemm_gflops": cpu_gemm_gflops(threads),
        "tokens_per_s": {name: alone for name, alone, _, _ in rows},
        "tokens_per_s_beside_rival": {name: c for name, _, c, _ in rows} if args.contend else None,
        "rollout_real_tokens_per_s": {name: {"padded": w, "grouped": g, "max_abs_score_difference": d}
                                      for name, w, g, d in padding} or None,
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_facts()["model"], "logical_cores": mp.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version()}
    atomic_write_json(path, data)
    print(f"wrote {key} to {path}")


def measure_contended(model, args, vocab: int) -> float:
    """Tokens per second beside a process multiplying matrices on --contend-threads threads."""
    stop = mp.get_context("spawn").Event()
    rival = mp.get_context("spawn").Process(target=_compete, args=(args.contend_threads, stop))
    rival.start()
    time.sleep(2.0)  # let it start multiplying
    try:
        return tokens_per_second(model, args.batch, args.tokens, vocab, args.repeats)[0]
    finally:
        stop.set()
        rival.join()


if __name__ == "__main__":
    raise SystemExit(main())
