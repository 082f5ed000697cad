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

from tinyrlhf.budget import bf16_rate
from tinyrlhf.env import cpu_facts
from tinyrlhf.reward import pin_int8_matmul

PRECISIONS = ("bf16", "int8", "int4")
DOCS_FILE = Path(__file__).resolve().parents[1] / "docs" / "rm-scoring.json"


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


VARIANTS = {"bf16": [("bf16", "dense", None)],
            "int8": [("int8 (dense)", "dense", None), ("int8 (dequantized)", "bitsandbytes", "dequantized"),
                     ("int8 (llm.int8)", "bitsandbytes", "llm.int8")],
            "int4": [("int4 (dense)", "dense", None), ("int4 (bitsandbytes)", "bitsandbytes", None)]}


def models(size: str, workdir: str | None):
    """(name, model, vocab) for each CPU path of each precision (VARIANTS: the dense copy of tinyrlhf.kernels and
    bitsandbytes' own layers), each freshly loaded: the trained cpu-profile reward models, or the real
    architecture's backbone at each precision (random weights, built like a reward model from its SFT model)."""
    from tinyrlhf.config import get_paths
    from tinyrlhf.kernels import dense_copy
    from tinyrlhf.reward import load_backbone, load_reward_model

    if size == "real":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from real_size_memory import build_model_folder

        folder = Path(workdir or "/tmp/real-size-scoring") / "qwen2.5-0.5b-architecture"
        if not (folder / "config.json").exists():
            print(f"building the Qwen2.5-0.5B architecture (random weights) in {folder} ...", flush=True)
            build_model_folder(folder)
    # bf16 first and again last (its second figure is the reference): the first model measured ran slower here
    order = [("bf16", VARIANTS["bf16"][0])] + [(p, v) for p in PRECISIONS[1:] for v in VARIANTS[p]]
    order.append(("bf16", ("bf16 (again)", "dense", None)))
    for precision, (name, kernel, matmul) in order:
        if size == "cpu":
            path = get_paths(workdir).rm(precision)
            if not (path / "adapter_config.json").exists():
                print(f"{precision}: no trained reward model in {path}; run 03_Reward_Modeling first")
                continue
            model, _ = load_reward_model(path, device="cpu", cpu_kernel=kernel,
                                         int8_cpu_matmul=matmul or "dequantized")
            yield name, model, model.config.vocab_size
            continue
        torch.manual_seed(0)  # the same random score head in every variant, so their scores compare
        model, _ = load_backbone(str(folder), precision, pad_token_id=0, device="cpu")
        model.eval()
        if kernel == "dense" and precision != "bf16":
            dense_copy(model, model.dtype)
        if matmul:
            pin_int8_matmul(model, matmul)
        yield name, model, 2000  # the folder's tokenizer has 2,000 tokens


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
    for name, model, vocab in models(args.size, args.workdir):
        alone, scores = tokens_per_second(model, args.batch, args.tokens, vocab, args.repeats)
        contended = measure_contended(model, args, vocab) if args.contend else None
        rows.append((name, alone, contended, scores))
        if args.rollouts:
            padding.append((name, *rollout_tokens_per_second(model, *rollout_batch(
                args.batch * 2, args.tokens, vocab, model.config.pad_token_id), model.config.pad_token_id,
                repeats=args.repeats)))
        del model
    if not rows:
        return 1
    measured = {p: a for p, a, _, _ in rows}
    ref = bf16_rate(measured) if "bf16" in measured else None
    trained = {name.split()[0]: s for name, _, _, s in rows if name.endswith("(dense)")}  # the training forward
    print(f"\nCPU reward scoring ({args.size}), batch {args.batch} x {args.tokens} tokens, best of {args.repeats}, "
          f"{torch.get_num_threads()} torch threads, {cpu_facts()['kind']} CPU ({', '.join(cpu_facts()['flags'])})")
    print(f"{'precision':<22} {'tokens/s':>10} {'vs bf16':>8} {'max |score - trained forward|':>30}"
          + (f" {'contended':>10} {'slowdown':>9}" if args.contend else ""))
    for name, alone, contended, scores in rows:
        base = trained.get(name.split()[0])
        diff = "-" if base is None or name.endswith("(dense)") else f"{(scores - base).abs().max().item():.2g}"
        line = f"{name:<22} {alone:>10.0f} {(f'{alone / ref:.2f}x' if ref else '-'):>8} {diff:>30}"
        if contended is not None:
            line += f" {contended:>10.0f} {alone / contended:>8.1f}x"
        print(line)
    if args.write_json:
        write_json(Path(args.write_json), args, rows, padding)
    if DOCS_FILE.exists():
        print("\n" + side_by_side(Path(args.write_json or DOCS_FILE), f"threads={torch.get_num_threads()}"))
    for name, whole, grouped, diff in padding:
        if name == padding[0][0]:
            print(f"\nrollout-shaped batch ({args.batch * 2} rows), real tokens/s: {'precision':<18} "
                  f"{'padded':>8} {'grouped':>8} {'speed-up':>9} {'max |score diff|':>17}")
        print(f"{'':<50}{name:<18} {whole:>8.0f} {grouped:>8.0f} {grouped / whole:>8.2f}x {diff:>17.2g}")
    return 0


def write_json(path: Path, args, rows, padding) -> None:
    """Merge this run into `path` under this CPU's kind (env.cpu_kind: bf16 arithmetic and kernel speeds differ
    between kinds): tokens/s per CPU path alone and beside the rival, this CPU's float32 matrix-multiply speed on the
    same threads (tinyrlhf.budget's yardstick between machines)."""
    import json
    import platform

    from tinyrlhf.budget import cpu_gemm_gflops
    from tinyrlhf.results import atomic_write_json

    threads = torch.get_num_threads()
    facts = cpu_facts()
    data = json.loads(path.read_text()) if path.exists() else {}
    kind = data.setdefault("kinds", {}).setdefault(facts["kind"], {})
    kind.update(cpu=facts["model"], flags=facts["flags"], bf16_native=facts["bf16_usable"])
    key = f"threads={threads}" + (f", rival threads={args.contend_threads}" if args.contend else "")
    kind.setdefault("runs", {})[key] = {
        "size": args.size, "batch": args.batch, "tokens": args.tokens, "threads": threads,
        "rival_threads": args.contend_threads if args.contend else None, "repeats": args.repeats,
        "gemm_gflops": cpu_gemm_gflops(threads),
        "tokens_per_s": {name: alone for name, alone, _, _ in rows},
        "tokens_per_s_beside_rival": {name: c for name, _, c, _ in rows} if args.contend else None,
        "rollout_real_tokens_per_s": {name: {"padded": w, "grouped": g, "max_abs_score_difference": d}
                                      for name, w, g, d in padding} or None,
        "date": time.strftime("%Y-%m-%d"), "cpu": facts["model"], "logical_cores": mp.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version()}
    atomic_write_json(path, data)
    print(f"wrote {facts['kind']} / {key} to {path}")


def side_by_side(path: Path, key: str = "threads=2") -> str:
    """Each CPU kind's `key` run from `path`, one column pair (tokens/s, vs bf16) per kind: the table issue 22 asks
    the benchmark to print."""
    import json

    kinds = {}
    for kind, v in json.loads(path.read_text()).get("kinds", {}).items():
        runs = v.get("runs", {})  # the run alone on these threads, else one beside a rival (its "alone" figures)
        match = runs.get(key) or next((r for k, r in runs.items() if k.startswith(key + ",")), None)
        if match is not None:
            kinds[kind] = match
    if not kinds:
        return f"{path} holds no '{key}' run"
    names = list(dict.fromkeys(n for run in kinds.values() for n in run["tokens_per_s"]))
    head = f"{'CPU path':<22}" + "".join(f" {k + ' tok/s':>18} {'vs bf16':>8}" for k in kinds)
    lines = [f"real-size reward scoring, {key}, from {path}:", head]
    for name in names:
        line = f"{name:<22}"
        for run in kinds.values():
            tps = run["tokens_per_s"].get(name)
            bf16 = bf16_rate(run["tokens_per_s"])
            line += (f" {tps:>18.0f} {tps / bf16:>7.2f}x" if tps is not None
                     else f" {'-':>18} {'-':>8}")
        lines.append(line)
    lines.append("  " + "; ".join(f"{k}: {run['cpu']}, measured {run['date']}" for k, run in kinds.items()))
    return "\n".join(lines)


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
