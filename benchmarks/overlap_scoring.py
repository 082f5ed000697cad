"""Does PPO's reward scoring on a Python thread really overlap a launch-bound main thread, or does the GIL make it
serial? A CPU benchmark of the mechanism ppo.OverlappedScoring relies on (and tinyrlhf.budget counts as fully
hidden): a random-weight reward model at Qwen2.5-0.5B's size scores a rollout-chunk-shaped batch while the main
thread runs a loop of tiny torch ops, against each alone.

    .venv/bin/python benchmarks/overlap_scoring.py                          # real size, 8 x 512 tokens, float32
    .venv/bin/python benchmarks/overlap_scoring.py --layers 2 --tokens 128 --repeats 2    # a quick check
    .venv/bin/python benchmarks/overlap_scoring.py --threads 1 --write docs/overlap-scoring.json

Modes, each the median of `--repeats` after a warm-up, interleaved so that drift hits them alike:
- scoring alone (main thread, also on the worker thread and in the worker process: their hand-over costs);
- the loop alone: `--loop-iters` iterations of 12 tiny ops on 8 x 896 tensors (0: as many as take as long as
  scoring alone, so that either side can hide the other completely);
- thread: scoring submitted to a 1-worker ThreadPoolExecutor, as OverlappedScoring does, then the loop;
- thread, switch interval S: the same with sys.setswitchinterval(S) (`--switch-interval`, CPython's default is
  5 ms), the one-line mitigation;
- process: scoring in a worker process (`--start-method`, spawn by default) that built its own copy of the model
  before any timing; the token ids go to it through a pipe, the scores come back.
For each concurrent mode: wall time against the sum and the max of the two alone, the overlap share
(sum alone - wall) / min(scoring alone, loop alone) (1: the shorter side completely hidden, 0: serial, below 0:
worse than serial), each side's slowdown (the scoring side timed from its submission to its last op, so a thread
that waits for the GIL to start counts), and the scoring's extra time per aten op of its forward, to compare with
the switch interval. No timed assertions: it prints a table, and `--write PATH` the numbers as JSON with a manifest.

What it can show: whether the scoring thread gets the GIL often enough while another thread keeps taking it, i.e.
whether ~a thousand Python-level ops per forward, each re-taking the GIL from a thread that releases and re-takes it
every few microseconds (a released-and-retaken GIL does not count as a switch, so the waiting thread may not even
ask for it after the interval), serialise the two; and how much a process or a shorter switch interval recovers.
What it cannot: the card's timing. On a card the main thread mostly launches CUDA kernels, which hold the GIL for
the Python side of each launch (as these tiny CPU ops do) and release it while synchronizing (a .item() per
decode step in generate, the reference and value passes' copies), so the loop stands in for the GIL pressure of a
launch-bound generation, not for its duration; a generation that waits on the card more than it launches leaves
the GIL free more often than this loop does. Both sides also share this machine's cores (the loop keeps one busy):
`--threads 1` on a 2-core machine separates the GIL from core contention, and the process mode is the control
without the GIL. The forward here is the model's own (no padding, no length-sorted groups as reward.CPURewardModel
does, which means more forwards and more ops, not fewer). Run it alone: these are timings.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # real_size_memory: Qwen2.5-0.5B's published config
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tinyrlhf, without installing the package

from real_size_memory import QWEN25_05B

PAD = 0  # the model's pad token id; the batch has none (ids from 1 up), so every row is scored at its last token
LOOP_OPS_PER_ITER = 12


def build_reward_model(layers: int = 24, dtype: str = "fp32", vocab: int | None = None, seed: int = 0):
    """Qwen2.5-0.5B's architecture (`layers` of its 24, `vocab` rows of its 151,936) with a one-label score head,
    random weights (no hub), eval mode."""
    from transformers import AutoModelForSequenceClassification, Qwen2Config

    config = Qwen2Config(**QWEN25_05B | {"num_hidden_layers": layers, "vocab_size": vocab or QWEN25_05B["vocab_size"],
                                         "pad_token_id": PAD, "num_labels": 1})
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    return model.eval()


def rollout_chunk(rows: int, tokens: int, vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (no padding) and attention mask shaped like a PPO rollout chunk scored by the reward model."""
    ids = torch.randint(1, vocab, (rows, tokens), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def timed_score(model, ids, mask) -> tuple[float, float, torch.Tensor]:
    """(start, end, scores) of one forward; no_grad here because grad mode is per thread."""
    with torch.no_grad():
        t0 = time.perf_counter()
        scores = model(input_ids=ids, attention_mask=mask).logits.float().squeeze(-1)
        return t0, time.perf_counter(), scores


def aten_ops_per_forward(model, ids, mask) -> int:
    """aten ops one forward dispatches (on a 1 x 8 slice: the count does not depend on the batch's size), the
    number of times the scoring has to come back into Python and take the GIL, roughly."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        model(input_ids=ids[:1, :8], attention_mask=mask[:1, :8])
    return Count.n


class LaunchBoundLoop:
    """The main thread's stand-in for a launch-bound generation: LOOP_OPS_PER_ITER tiny torch ops per iteration on
    rows x hidden tensors (a scale, a bias, an RMS norm, a 64-wide matmul, SiLU, a concatenation), each a few
    microseconds of Python and dispatch for a few of arithmetic."""

    def __init__(self, rows: int = 8, hidden: int = 896, seed: int = 2):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(rows, hidden, generator=g)
        self.scale = torch.rand(hidden, generator=g) + 0.5
        self.bias = torch.randn(hidden, generator=g) * 0.1
        self.w = torch.randn(64, 64, generator=g) / 8

    def run(self, iters: int) -> float:
        x = self.x
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(iters):
                h = x * self.scale
                h = h + self.bias
                v = h.pow(2).mean(-1, keepdim=True)
                h = h * torch.rsqrt(v + 1e-6)
                s = torch.nn.functional.silu(h[:, :64] @ self.w)
                x = torch.cat((s, h[:, 64:]), 1)
            return time.perf_counter() - t0


def _scoring_process(conn, layers: int, dtype: str, vocab: int | None, threads: int, shape) -> None:
    """Worker process: build the model, warm up on `shape`, say ready, then score what comes down the pipe."""
    if threads:
        torch.set_num_threads(threads)
    model = build_reward_model(layers, dtype, vocab)
    timed_score(model, *rollout_chunk(*shape, model.config.vocab_size))
    conn.send(("ready", torch.get_num_threads()))
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        t0, t1, scores = timed_score(model, msg[1], msg[2])
        conn.send((t0, t1, scores))


class ScoringProcess:
    def __init__(self, args, shape, vocab: int | None):
        import multiprocessing as mp

        ctx = mp.get_context(args.start_method)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_scoring_process, daemon=True,
                                args=(child, args.layers, args.dtype, vocab, args.threads, shape))
        self.proc.start()
        child.close()
        self.threads = None

    def wait_ready(self) -> None:
        msg = self.conn.recv()
        assert msg[0] == "ready", msg
        self.threads = msg[1]

    def submit(self, ids, mask) -> None:
        self.conn.send(("score", ids, mask))

    def result(self) -> tuple[float, float, torch.Tensor]:
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except OSError:
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()


def _median(xs):
    return statistics.median(xs) if xs else None


def measure(args) -> dict:
    """Every measurement of the module docstring; returns the numbers (seconds, medians and samples)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"thread", "thread-switch", "process"}
    if unknown:
        raise SystemExit(f"unknown modes: {sorted(unknown)}")
    vocab = args.vocab or QWEN25_05B["vocab_size"]
    shape = (args.rows, args.tokens)
    proc = ScoringProcess(args, shape, args.vocab) if "process" in modes else None  # builds while we build
    try:
        t = time.perf_counter()
        model = build_reward_model(args.layers, args.dtype, args.vocab)
        build_s = time.perf_counter() - t
        ids, mask = rollout_chunk(*shape, vocab)
        loop = LaunchBoundLoop(rows=args.rows)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-scoring")
        ops = aten_ops_per_forward(model, ids, mask)
        if proc is not None:
            proc.wait_ready()

        # warm-up: scoring on the main thread and on the worker thread (its OpenMP team), the loop, the process
        t0, t1, reference = timed_score(model, ids, mask)
        first = t1 - t0
        worker_threads = executor.submit(torch.get_num_threads).result()
        executor.submit(timed_score, model, ids, mask).result()
        per_iter = loop.run(200) / 200
        process_score_diff = None
        if proc is not None:  # the same seed builds the same weights there: the same scores
            proc.submit(ids, mask)
            process_score_diff = (proc.result()[2] - reference).abs().max().item()
        t0, t1, _ = timed_score(model, ids, mask)
        iters = args.loop_iters or max(100, round(min(t1 - t0, first) / per_iter))
        loop.run(min(iters, 2000))

        default_interval = sys.getswitchinterval()
        samples: dict[str, dict[str, list]] = {}

        def add(name: str, **vals) -> None:
            for k, v in vals.items():
                samples.setdefault(name, {}).setdefault(k, []).append(v)

        for _ in range(args.repeats):
            t0, t1, _ = timed_score(model, ids, mask)
            add("scoring alone", scoring=t1 - t0)
            t = time.perf_counter()
            t0, t1, _ = executor.submit(timed_score, model, ids, mask).result()
            add("scoring alone, worker thread", scoring=t1 - t, compute=t1 - t0)
            if proc is not None:
                t = time.perf_counter()
                proc.submit(ids, mask)
                t0, t1, _ = proc.result()
                add("scoring alone, worker process", scoring=time.perf_counter() - t, compute=t1 - t0)
            add("loop alone", loop=loop.run(iters))
            for mode in modes:
                if mode == "process":
                    t = time.perf_counter()
                    proc.submit(ids, mask)
                    loop_s = loop.run(iters)
                    t0, t1, _ = proc.result()
                    wall = time.perf_counter() - t
                    add("process", wall=wall, loop=loop_s, scoring=t1 - t, compute=t1 - t0, start_delay=t0 - t)
                    continue
                name = "thread" if mode == "thread" else f"thread, switch interval {args.switch_interval * 1e3:g} ms"
                sys.setswitchinterval(default_interval if mode == "thread" else args.switch_interval)
                try:
                    t = time.perf_counter()
                    future = executor.submit(timed_score, model, ids, mask)
                    loop_s = loop.run(iters)
                    t0, t1, _ = future.result()
                    wall = time.perf_counter() - t
                finally:
                    sys.setswitchinterval(default_interval)
                add(name, wall=wall, loop=loop_s, scoring=t1 - t, compute=t1 - t0, start_delay=t0 - t)
        executor.shutdown(wait=True)
    finally:
        if proc is not None:
            proc.close()

    med = {name: {k: _median(v) for k, v in vals.items()} for name, vals in samples.items()}
    alone_scoring, alone_loop = med["scoring alone"]["scoring"], med["loop alone"]["loop"]
    total = alone_scoring + alone_loop
    longest, shortest = max(alone_scoring, alone_loop), min(alone_scoring, alone_loop)
    concurrent = {}
    for name, m in med.items():
        if "wall" not in m:
            continue
        concurrent[name] = m | {
            "wall_vs_sum": m["wall"] / total, "wall_vs_max": m["wall"] / longest,
            "overlap": (total - m["wall"]) / shortest,
            "loop_slowdown": m["loop"] / alone_loop, "scoring_slowdown": m["scoring"] / alone_scoring,
            "extra_ms_per_scoring_op": (m["scoring"] - alone_scoring) / ops * 1e3}
    return {
        "settings": {"layers": args.layers, "dtype": args.dtype, "vocab": vocab, "rows": args.rows,
                     "tokens": args.tokens, "repeats": args.repeats, "loop_iters": iters,
                     "loop_ops_per_iter": LOOP_OPS_PER_ITER, "switch_interval_s": args.switch_interval,
                     "default_switch_interval_s": default_interval, "start_method": args.start_method,
                     "modes": modes},
        "threads": {"main": torch.get_num_threads(), "worker_thread": worker_threads,
                    "worker_process": proc.threads if proc is not None else None},
        "model_build_s": build_s,
        "process_max_abs_score_difference": process_score_diff,
        "aten_ops_per_forward": ops,
        "loop_us_per_op": alone_loop / (iters * LOOP_OPS_PER_ITER) * 1e6,
        "alone": {"scoring_s": alone_scoring, "loop_s": alone_loop, "sum_s": total, "max_s": longest,
                  "scoring_worker_thread_s": med["scoring alone, worker thread"]["scoring"],
                  "scoring_worker_process_s": (med["scoring alone, worker process"]["scoring"]
                                               if "scoring alone, worker process" in med else None)},
        "concurrent": concurrent,
        "medians": med,
        "samples": samples,
    }


def print_report(r: dict) -> None:
    s, a = r["settings"], r["alone"]
    print(f"\nreward scoring beside a launch-bound loop: {s['layers']} layers, {s['dtype']}, vocab {s['vocab']}, "
          f"{s['rows']} x {s['tokens']} tokens; median of {s['repeats']}; torch threads main "
          f"{r['threads']['main']}, worker thread {r['threads']['worker_thread']}, worker process "
          f"{r['threads']['worker_process']}")
    print(f"scoring: {r['aten_ops_per_forward']} aten ops per forward; loop: {s['loop_iters']} iterations x "
          f"{s['loop_ops_per_iter']} ops, {r['loop_us_per_op']:.1f} us per op alone; CPython switch interval "
          f"{s['default_switch_interval_s'] * 1e3:g} ms")
    if r["process_max_abs_score_difference"] is not None:
        print(f"worker process's scores vs this process's: max |difference| "
              f"{r['process_max_abs_score_difference']:.2g}")
    print(f"\n{'alone':<34} {'seconds':>8}")
    print(f"{'scoring (main thread)':<34} {a['scoring_s']:>8.3f}")
    print(f"{'scoring (worker thread, round trip)':<34} {a['scoring_worker_thread_s']:>8.3f}")
    if a["scoring_worker_process_s"] is not None:
        print(f"{'scoring (worker process, round trip)':<34} {a['scoring_worker_process_s']:>8.3f}")
    print(f"{'loop':<34} {a['loop_s']:>8.3f}")
    print(f"{'sum / max':<34} {a['sum_s']:>8.3f} / {a['max_s']:.3f}")
    head = (f"\n{'concurrent':<34} {'wall s':>7} {'loop s':>7} {'score s':>8} {'wall/sum':>9} {'wall/max':>9} "
            f"{'overlap':>8} {'loop x':>7} {'score x':>8} {'+ms/op':>7}")
    print(head)
    for name, c in r["concurrent"].items():
        print(f"{name:<34} {c['wall']:>7.3f} {c['loop']:>7.3f} {c['scoring']:>8.3f} {c['wall_vs_sum']:>9.2f} "
              f"{c['wall_vs_max']:>9.2f} {c['overlap']:>8.2f} {c['loop_slowdown']:>6.2f}x "
              f"{c['scoring_slowdown']:>7.2f}x {c['extra_ms_per_scoring_op']:>7.3f}")
    print("\noverlap = (sum alone - wall) / min(alone): 1 = the shorter side fully hidden, 0 = serial. loop x, score x:"
          " each side's time beside the other over its time alone (scoring from submission to its last op).\n"
          "+ms/op: the scoring's extra time per aten op of its forward (compare with the switch interval).")


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def manifest() -> dict:
    import os
    import platform

    from tinyrlhf.results import package_versions

    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": [sys.executable, *sys.argv], "cpu": cpu_model(), "logical_cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_parallel_backend": "OpenMP" if torch.backends.openmp.is_available() else None,
            "platform": platform.platform(), "packages": package_versions()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=QWEN25_05B["num_hidden_layers"],
                    help="decoder layers (Qwen2.5-0.5B: 24); fewer for a quick run")
    ap.add_argument("--vocab", type=int, default=0, help="embedding rows (0: Qwen2.5-0.5B's 151,936)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--rows", type=int, default=8, help="rollout chunk rows (ppo.rollout_chunk)")
    ap.add_argument("--tokens", type=int, default=512, help="tokens per row (prompt 384 + reply 128)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each process (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-iters", type=int, default=0,
                    help="loop iterations (0: as many as take as long as scoring alone)")
    ap.add_argument("--switch-interval", type=float, default=0.0005, help="seconds, for the thread-switch mode")
    ap.add_argument("--modes", default="thread,thread-switch,process",
                    help="comma-separated concurrent modes: thread, thread-switch, process")
    ap.add_argument("--start-method", choices=("spawn", "fork", "forkserver"), default="spawn")
    ap.add_argument("--write", metavar="PATH", help="write the numbers and a manifest as JSON")
    ap.add_argument("--note", help="free text for the manifest (e.g. what else ran on the machine)")
    args = ap.parse_args(argv)
    result = measure(args)
    print_report(result)
    if args.write:
        from tinyrlhf.results import atomic_write_json

        atomic_write_json(args.write, {"manifest": manifest() | {"note": args.note}, **result})
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
