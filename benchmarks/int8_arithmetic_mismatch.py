"""How large the int8 arm's mismatch would have been on a card, measured on the CPU: reward models trained under
LLM.int8 arithmetic (what bitsandbytes 0.50 trains int8 with on CUDA: `bnb.matmul` -> MatMul8bitLt, activations
quantized to int8, outlier columns above llm_int8_threshold = 6.0 split out), then scored both ways: under LLM.int8
and under the arithmetic every CPU and idle-card scoring used (the dense copy: int8 weights dequantized, times
unquantized activations). Beside them, models of the same seeds trained as the pipeline now trains every int8 arm
(pinned, kernels.pin_dequantized), scored the same two ways.

The cpu profile's data, SFT model and reward-model recipe (float32, its 400 steps), on its held-out pairs.

    .venv/bin/python benchmarks/int8_arithmetic_mismatch.py [--seeds 0 1 2] [--write docs/int8-arithmetic.json]

Run it alone (several minutes on 2 cores). What it shows: for a model trained under one int8 arithmetic, how many
held-out pairs the other orders differently and how far its scores move, against the model's own margins. What it
does not: the card's numbers (the same functions, another device's rounding), nor a tax: best-of-n and PPO were not
run on these models.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@contextlib.contextmanager
def cuda_int8_training():
    """bitsandbytes' CUDA choice for an int8 layer in training (MatMul8bitLt) on the CPU, and no pin."""
    import bitsandbytes as bnb
    from bitsandbytes.autograd._functions import MatMul8bitLt

    from tinyrlhf import reward

    def llm_int8(A, B, out=None, state=None, threshold=0.0, bias=None):
        return MatMul8bitLt.apply(A, B, out, bias, state)

    saved = bnb.matmul, reward.pin_dequantized
    bnb.matmul, reward.pin_dequantized = llm_int8, lambda model: 0
    try:
        yield
    finally:
        bnb.matmul, reward.pin_dequantized = saved


def compare(model_dir: Path, tokenizer, pairs) -> dict:
    from tinyrlhf.reward import evaluate_reward_model, load_reward_model

    scored = {}
    for name, kw in {"llm.int8": {"cpu_kernel": "bitsandbytes", "int8_cpu_matmul": "llm.int8"},
                     "dequantized": {"cpu_kernel": "dense"}}.items():
        model, _ = load_reward_model(model_dir, **kw)
        scored[name] = evaluate_reward_model(model, tokenizer, pairs)
    a, b = scored["llm.int8"], scored["dequantized"]
    sa, sb = a["scores_chosen"] + a["scores_rejected"], b["scores_chosen"] + b["scores_rejected"]
    margin = sum(abs(c - r) for c, r in zip(b["scores_chosen"], b["scores_rejected"])) / len(pairs)
    return {"accuracy_llm_int8": a["accuracy"], "accuracy_dequantized": b["accuracy"],
            "same_order": sum(x == y for x, y in zip(a["wins"], b["wins"])) / len(pairs),
            "max_abs_score_difference": max(abs(x - y) for x, y in zip(sa, sb)), "mean_abs_margin": margin}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--write", metavar="PATH")
    args = ap.parse_args(argv)

    from tinyrlhf import base_model, data, stages
    from tinyrlhf.config import get_paths, get_profile
    from tinyrlhf.results import atomic_write_json, git_commit, hardware
    from tinyrlhf.reward import train_reward_model

    profile = get_profile("cpu", overrides={"rm.precisions": ["int8"], "rm.null_arm": False,
                                             "rm.noisy_arm": False, "workers": 1})
    r = profile.rm
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = get_paths(tmp).make()
        stages.run_data(profile, paths, progress=False)
        stages.run_sft(profile, paths, progress=False)
        tokenizer = base_model.load_tokenizer(paths.sft_merged)
        train = data.read_pairs(paths.data_file("train"))
        test = data.read_pairs(paths.data_file("test"))[: r.eval_pairs]
        for seed in args.seeds:
            for trained_as in ("llm.int8", "dequantized (pinned)"):
                out = Path(tmp) / f"rm-{seed}-{trained_as.split()[0]}"
                with cuda_int8_training() if trained_as == "llm.int8" else contextlib.nullcontext():
                    train_reward_model(train, init_path=str(paths.sft_merged), tokenizer=tokenizer,
                                       precision="int8", out_dir=out, batch_size=r.batch_size, lr=r.lr,
                                       epochs=r.epochs, accum=r.accum, warmup=r.warmup, max_steps=r.max_steps,
                                       lora_r=r.lora_r, lora_alpha=r.lora_alpha, lora_dropout=r.lora_dropout,
                                       target_modules=r.target_modules, double_quant=r.double_quant,
                                       max_length=profile.data.max_prompt_tokens + profile.data.max_response_tokens
                                       + 1, seed=seed, profile=profile)
                rows.append({"seed": seed, "trained_as": trained_as, **compare(out, tokenizer, test)})
                c = rows[-1]
                print(f"seed {seed} trained as {trained_as:<20} accuracy LLM.int8 {c['accuracy_llm_int8']:.3f} / "
                      f"dequantized {c['accuracy_dequantized']:.3f}; same order {c['same_order']:.1%}; largest "
                      f"score difference {c['max_abs_score_difference']:.3g} (mean |margin| "
                      f"{c['mean_abs_margin']:.3g})", flush=True)
    if args.write:
        atomic_write_json(args.write, {"rows": rows, "pairs": len(test), "profile": "cpu",
                                       "commit": git_commit(), "hardware": hardware(),
                                       "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
