"""An int8 reward model's training memory at the real size, on the CPU: bitsandbytes' own int8 training forward
against the pinned one (kernels.pin_dequantized), with activation checkpointing as on the card.

bitsandbytes 0.50's MatMul8bitFp keeps each int8 layer's input on its autograd ctx (`ctx.A`), outside
save_for_backward, so non-reentrant activation checkpointing, which replaces only what save_for_backward saves,
cannot free it: every int8 layer's input stays alive until backward. The pinned product saves nothing (the input's
gradient needs only the weights). Each variant runs in its own process: the Qwen2.5-0.5B architecture (random
weights, no hub) loaded at int8 by the reward-model loader the pipeline uses, LoRA on the rtx4060 profile's targets,
one forward and backward of rm.batch_size pairs (2 x 4 sequences) of --tokens tokens, in the card's dtype (bf16);
the peak RSS above the loaded model is the training step's.

    .venv/bin/python benchmarks/int8_training_memory.py [--tokens 512] [--write docs/int8-training-memory.json]

Run it alone. What it shows: how much of an int8 reward model's training step escapes checkpointing, at the real
shapes, and that the pinned path does not keep it. What it does not: CUDA's allocator (the card keeps the same
tensors: the count is the same, its rounding is not measured here).
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("bitsandbytes", "pinned")


def step(folder: str, variant: str, rows: int, tokens: int) -> dict:
    """One training step's peak RSS above the loaded model (this process)."""
    import psutil
    import torch

    from tinyrlhf import kernels
    from tinyrlhf.config import get_profile
    from tinyrlhf.reward import load_backbone
    from tinyrlhf.runtime import lora_config

    profile = get_profile("rtx4060")
    model, _ = load_backbone(folder, "int8", pad_token_id=0, device="cpu", compute_dtype=torch.bfloat16)
    if variant == "pinned":
        kernels.pin_dequantized(model)
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(model, r=profile.rm.lora_r, alpha=profile.rm.lora_alpha, dropout=0.0,
                                              target_modules=profile.rm.target_modules, task_type="SEQ_CLS"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    ids = torch.randint(1, 1000, (rows, tokens))
    before = psutil.Process().memory_info().rss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids).logits.float().sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "rows": rows, "tokens": tokens, "rss_before_bytes": before, "peak_bytes": peak,
            "step_peak_bytes": peak - before}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=512, help="tokens per sequence (rtx4060: 384 + 128)")
    ap.add_argument("--rows", type=int, default=8, help="sequences per step (rtx4060: rm.batch_size 4 pairs)")
    ap.add_argument("--write", metavar="PATH")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(step(args.child[0], args.child[1], args.rows, args.tokens)))
        return 0

    from real_size_memory import build_model_folder

    from tinyrlhf.results import atomic_write_json, git_commit, hardware

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_model_folder(Path(tmp))
        for variant in VARIANTS:
            done = subprocess.run([sys.executable, __file__, "--child", tmp, variant, "--rows", str(args.rows),
                                   "--tokens", str(args.tokens)], capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{variant:<13} step peak above the loaded model: {rows[-1]['step_peak_bytes'] / 2**30:.2f} GiB",
                  flush=True)
    saved = rows[0]["step_peak_bytes"] - rows[1]["step_peak_bytes"]
    print(f"kept outside checkpointing by bitsandbytes' int8 training forward: {saved / 2**30:.2f} GiB "
          f"({rows[0]['step_peak_bytes'] / rows[1]['step_peak_bytes']:.2f}x the pinned step's peak)")
    if args.write:
        atomic_write_json(args.write, {"rows": rows, "escaped_checkpointing_bytes": saved, "commit": git_commit(),
                                       "hardware": hardware(), "date": datetime.date.today().isoformat(),
                                       "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
