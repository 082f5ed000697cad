"""The memory estimator checked at the real size and in the card's dtypes, without a GPU: the rtx4060 profile's
stages run on CPU with the Qwen2.5-0.5B architecture (its published configuration, random weights: no hub), with
bf16 weights as on the card (base.train_dtype="bf16"), at the profile's own batch and chunk sizes, evaluation passes
included, each stage in its own process through the command line a user runs. Prints each stage's measured peak
(process RSS) beside the estimator's figure for the same settings, and the ratio; the goal is within +-20%.

    .venv/bin/python benchmarks/real_size_memory.py [--workdir DIR] [--write-json docs/real-size-memory.json]
    .venv/bin/python benchmarks/real_size_memory.py --device cuda   # on a GPU: CUDA max allocated vs the estimate

Run it alone (measured peaks, not timings, but two jobs at once crawl); bf16 is emulated on a CPU without
AVX512-BF16, so the stages are slow (docs/gpu-run.md says how long it took).
What it shows: the estimator's bookkeeping of weights, adapters, optimizer state, activations and the
151,936-token logits at Qwen2.5-0.5B's real shapes and the card's dtypes, and that the GPU profile's code path
(Qwen2 modules, LoRA on q/k/v/o_proj, bitsandbytes int8/NF4 layers, a pad token in a spare embedding row, bf16
autocast with float32 trainable parameters, the evaluation passes chunked as on the card) runs at that size. What it
does not: CUDA memory (the GPU figures add the CUDA context and fragmentation by the same formulas), CUDA kernels'
own workspaces, and the full 384 + 128-token length.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Qwen/Qwen2.5-0.5B's config.json as published on the hub (the values that shape memory).
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643)

# The rtx4060 profile in the card's dtypes (base.train_dtype="bf16": bf16 weights, float32 trainable parameters,
# bf16 autocast, as on the card) at the profile's own batch and chunk sizes, on which a pass's peak depends:
# sft.batch_size 2, 16 held-out sequences per forward (sft.heldout_loss), 64 replies sampled at once
# (eval.prompts x eval.samples, capped at evaluate.sample's chunk), rm.batch_size 4 pairs, ppo.micro_batch 4 (TRL's
# per-device batch), ppo.rollout_chunk 8 (the rollout, and the checkpoints' KL). Shrunk only where a peak does not
# depend on it (steps, epochs, gradient accumulation, the PPO batch: one mini-batch) and in length: 64 + 32 tokens
# instead of 384 + 128, as bf16 is emulated on most CPUs and an hour is what a user will wait; the estimator's
# length terms are checked at this length only.
SETTINGS = {"base.train_dtype": "bf16", "data.source": "synthetic", "data.synthetic_pairs": 300,
            "data.max_prompt_tokens": 64, "data.max_response_tokens": 32,
            "sft.batch_size": 2, "sft.accum": 1, "sft.max_steps": 2, "sft.eval_pairs": 16, "sft.sample_prompts": 4,
            "rm.precisions": ["bf16", "int8", "int4"], "rm.null_arm": False, "rm.noisy_arm": False,
            "rm.batch_size": 4, "rm.accum": 1, "rm.max_steps": 1, "rm.eval_pairs": 16, "rm.seeds": [0],
            "ppo.ppo_batch": 16, "ppo.mini_batch": 16, "ppo.micro_batch": 4, "ppo.rollout_chunk": 8,
            "ppo.ppo_epochs": 1, "ppo.max_new": 32, "ppo.steps": 1, "eval.judge": "gold",
            "eval.prompts": 16, "eval.samples": 4, "eval.checkpoints": 1, "eval.cross_samples": 1,
            "eval.bootstrap": 20}


def build_model_folder(folder: Path) -> None:
    """Random-weight Qwen2.5-0.5B architecture (bf16 on disk, as released) with a small BPE tokenizer that, like
    Qwen2.5 base, has no distinct pad token; its tokens use the first rows of the 151,936-row embedding."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tinyrlhf.base_model import train_tokenizer
    from tinyrlhf.synthetic import pretraining_corpus

    tok = train_tokenizer(pretraining_corpus(500, 0), vocab_size=2000)
    tok.pad_token = None  # Qwen2.5 base pads with EOS; load_tokenizer adds a distinct pad in a spare row
    tok.save_pretrained(folder)
    config = Qwen2Config(**QWEN25_05B | {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id})
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)


def run_stage(stage: str, folder: Path, workdir: Path, device: str) -> None:
    sets = [f"--set={k}={json.dumps(v)}" for k, v in SETTINGS.items()]
    sets += [f"--set=base.model={folder}", f"--set=device={json.dumps(device)}"]
    cmd = [sys.executable, "-m", "tinyrlhf", "run", stage, "--profile", "rtx4060", "--workdir", str(workdir), *sets]
    print(f"running {stage} ...", flush=True)
    subprocess.run(cmd, check=True)


def measured(workdir: Path) -> list[dict]:
    """Each stage's measured peak, as its result recorded it (process peak RSS on CPU)."""
    results = workdir / "results"
    records = [json.loads((results / "sft_results.json").read_text())["memory"]]
    rm = json.loads((results / "rm_results.json").read_text())["models"]
    records += [rm[f"{p}/seed0"]["memory"] for p in SETTINGS["rm.precisions"]]
    ppo = json.loads((results / "ppo_experiment_results.json").read_text())["arms"]
    records += [ppo[p]["seeds"][0]["memory"] for p in SETTINGS["rm.precisions"]]
    return [{"stage": r["stage"], "measured_bytes": r["measured_bytes"], "measured": r["measured"]} for r in records]


def table(rows: list[dict]) -> str:
    gib = 2**30
    lines = ["| stage | measured peak | estimate | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['measured_bytes'] / gib:.2f} GiB | {r['estimate_bytes'] / gib:.2f} GiB | "
              f"{r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="where the model folder and the stages' artifacts go (default: a temp dir; "
                                      "finished stages there are reused)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: run the stages on a GPU and compare CUDA max allocated with the GPU estimate")
    ap.add_argument("--write-json", metavar="PATH", help="record the measurements (e.g. docs/real-size-memory.json, "
                                                         "which docs/hardware.md and a test read)")
    args = ap.parse_args(argv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="real-size-"))
    folder = root / "qwen2.5-0.5b-architecture"
    if not (folder / "config.json").exists():
        print(f"building the Qwen2.5-0.5B architecture (random weights) in {folder} ...", flush=True)
        build_model_folder(folder)
    for stage in ("data", "sft", "rm", "ppo"):
        run_stage(stage, folder, root / "work", args.device)
    import platform

    import torch
    import transformers
    import trl

    from tinyrlhf import memory
    from tinyrlhf.env import cpu_facts

    facts = cpu_facts()
    record = {"date": str(datetime.date.today()), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} torch threads", "versions": {"torch": torch.__version__,
              "transformers": transformers.__version__, "trl": trl.__version__},
              "cpu": {"kind": facts["kind"], "flags": facts["flags"], "model": facts["model"]}, "current": True,
              "device": args.device, "profile": "rtx4060", "model": "Qwen/Qwen2.5-0.5B", "weights": "random",
              "settings": SETTINGS, "measured": measured(root / "work")}
    rows = memory.validation_rows(record)
    print(table(rows))
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"largest deviation from the estimate: {worst:.0%} (goal: within 20%)")
    if args.write_json:  # one record per CPU kind: bf16 arithmetic and bitsandbytes' CPU paths differ between them
        from tinyrlhf.results import atomic_write_json

        path = Path(args.write_json)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault("kinds", {})[facts["kind"]] = record
        atomic_write_json(path, data)
        print(f"wrote the {facts['kind']} record to {path}")
    return 0 if worst <= 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
