"""Markdown tables of estimated peak memory (tinyrlhf.memory) for docs/hardware.md.

Usage: .venv/bin/python scripts/hardware_tables.py [--write docs/hardware.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable without installing the package

from tinyrlhf import config, memory  # noqa: E402
from tinyrlhf.results import atomic_write_text  # noqa: E402

GiB = memory.GiB
CARD_GIB = 8
RAM_GIB = 16
FAMILY = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "Qwen/Qwen2.5-0.5B")
REGENERATE = "Regenerate with: .venv/bin/python scripts/hardware_tables.py --write docs/hardware.md"


def gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# The host the tables assume: a CPU without native bf16 (the usual desktop), where the reward model computes in
# float32; fixed, so the committed tables do not depend on the machine that generates them.
HOST_COMPUTE = "fp32"


def stage_table(profile: config.Profile) -> str:
    ests = memory.estimate_profile(profile, device="cuda", host_compute=HOST_COMPUTE)
    rows = []
    for v in memory.stage_verdicts(profile, gpu_bytes=CARD_GIB * GiB, ram_bytes=RAM_GIB * GiB,
                                   host_compute=HOST_COMPUTE):
        e = ests[v["stage"]]
        rows.append([v["stage"], gib(e.device_bytes), gib(e.cpu_bytes), v["verdict"], e.note or ""])
    return table(["stage", "GPU GiB", "CPU GiB", f"verdict on {CARD_GIB} GiB", "note"], rows)


def family_table(profile: config.Profile) -> str:
    s = profile.sft
    seq = profile.data.max_prompt_tokens + profile.data.max_response_tokens
    kw = dict(batch=s.batch_size, seq_len=seq, gradient_checkpointing=s.gradient_checkpointing)
    rows = []
    for name in FAMILY:
        spec = memory.KNOWN_MODELS[name]
        cells = []
        for precision, r in (("bf16", None), ("bf16", s.lora_r), ("int4", s.lora_r)):
            e = memory.estimate_sft(spec, precision=precision, lora_r=r, **kw)
            cells.append(f"{gib(e.device_bytes)} ({memory.fits(e, CARD_GIB * GiB)[0]})")
        rows.append([name, f"{spec.n_params / 1e6:.0f}M", *cells])
    return table(["model", "params", "full FT (bf16 mixed, AdamW)", f"LoRA r={s.lora_r} (bf16 base)",
                  f"QLoRA r={s.lora_r} (NF4 base)"], rows)


def ppo_batch_table(profile: config.Profile) -> str:
    """GPU memory of ppo_bf16 as the rollout batch and TRL's rollout chunk change, everything else as profiled."""
    p = profile.ppo
    chunks = (4, 8, 16, 64)
    rows = []
    for batch in (8, 16, 32, 64):
        cells = []
        for chunk in chunks:
            if chunk > batch:
                cells.append("")
                continue
            e = memory.estimate_ppo(memory.spec_for_profile(profile), rm_precision="bf16", batch=batch,
                                    mini_batch=p.micro_batch, rollout_chunk=chunk, value_from_rm=False,
                                    query_len=profile.data.max_prompt_tokens, response_len=p.max_new,
                                    lora_r=p.lora_r, target_modules=p.target_modules,
                                    gradient_checkpointing=profile.sft.gradient_checkpointing)
            cells.append(f"{gib(e.device_bytes)} ({memory.fits(e, CARD_GIB * GiB)[0]})")
        rows.append([batch, *cells])
    return table(["ppo_batch", *(f"rollout chunk {c}" for c in chunks)], rows)


def render() -> str:
    rtx = config.PROFILES["rtx4060"]
    d, s, p = rtx.data, rtx.sft, rtx.ppo
    seq = d.max_prompt_tokens + d.max_response_tokens
    ckpt = "on" if s.gradient_checkpointing else "off"
    cuda, host = f"{memory.CUDA_CONTEXT / GiB:.1f}", f"{memory.HOST_BASELINE['cuda'] / GiB:.1f}"
    frag = f"{memory.FRAGMENTATION:.0%}"
    return f"""# Hardware: estimated peak memory

Estimates from `tinyrlhf/memory.py` (see its docstring for every formula); they are deliberately simple,
monotone and on the high side, not measurements. Conventions: weights take fp32 4, bf16 2, int8 1 byte per
parameter (+ one fp32 scale per output row) and NF4 0.5 (+ one absmax per 64 weights; with double quantization,
the default, an 8-bit absmax plus one fp32 scale per 256 blocks); only the transformer blocks' linear layers are
quantized. Every trained parameter costs {memory.TRAINED_BYTES} bytes: full fine-tuning in bf16 mixed precision is bf16
weight 2 + bf16 gradient 2 + AdamW state {memory.OPTIMIZER_BYTES_MIXED} (fp32 master 4 + two fp32 moments 8); LoRA
adapters (r·(d_in + d_out) per targeted matrix) are fp32 weight 4 + gradient 4 + moments 8. Activations per token
per layer follow Korthikanti et al. (34h + 5·heads·seq bytes for GPT-2, no flash attention; gated MLPs count 8
bytes per intermediate unit); gradient checkpointing keeps only layer inputs plus one layer. Training logits cost
{memory.LOGIT_BYTES_TRAIN} bytes per element (fp32 copy + gradient). Headroom: {cuda} GiB for the CUDA context and
allocator plus {frag} fragmentation on the GPU, {host} GiB for the Python process on the host beside a card
({memory.HOST_BASELINE['cpu'] / GiB:.1f} GiB in a CPU-only run, as measured).
Verdicts: "fits" up to 85% of the capacity, "tight" up to 100%, else "will not fit".

## rtx4060 profile, stage by stage

Base model `{rtx.base.model}`, LoRA r={s.lora_r}, sequence {d.max_prompt_tokens}+{d.max_response_tokens} tokens,
gradient checkpointing {ckpt}; SFT batch {s.batch_size}, RM batch {rtx.rm.batch_size} pairs; PPO with the reward
model on the CPU (its memory is in the CPU column, with the checkpoint pages a quantizing loader keeps mapped),
the reference as the policy's disabled adapter, the value model the SFT model with a fresh head and its own LoRA,
{p.ppo_batch} rollouts per update, rollout chunk {p.rollout_chunk} (ppo.rollout_chunk) and {p.micro_batch} sequences
per training forward/backward (ppo.micro_batch).
Verdicts on an {CARD_GIB} GiB card with {RAM_GIB} GiB of RAM; the reward model on the CPU computes in float32 there
(a CPU without native bf16; half its weights' memory on one with AVX512-BF16).

{stage_table(rtx)}

{validation_section()}

## SFT: GPT-2 family and Qwen2.5-0.5B

Batch {s.batch_size}, sequence {seq}, gradient checkpointing {ckpt}, LoRA on the attention projections
(GPT-2: c_attn, c_proj, which in GPT-2 also names the MLP output; Qwen: q/k/v/o_proj). GPU GiB and the verdict on
{CARD_GIB} GiB.

{family_table(rtx)}

## PPO: rollout batch and rollout chunk on {CARD_GIB} GiB

TRL 1.12's PPOTrainer keeps the fp32 generation scores of every rollout in the batch (ppo_batch x response x vocab
x 4 bytes, plus a padded copy); `ppo.rollout_logprobs_per_chunk` turns each chunk's scores into per-token log-probs
as soon as the chunk is generated (same numbers, tested), so only one rollout chunk's scores
(`local_rollout_forward_batch_size`) and the reference's full logits for that chunk are alive at a time; with
Qwen's {memory.KNOWN_MODELS['Qwen/Qwen2.5-0.5B'].vocab}-token vocabulary both dominate. GPU GiB of ppo_bf16, other
settings as in the profile:

{ppo_batch_table(rtx)}

{REGENERATE}
"""


VALIDATION = Path(__file__).resolve().parent.parent / "docs" / "real-size-memory.json"


def validation_section() -> str:
    """The estimator beside the peaks measured at Qwen2.5-0.5B's size on CPU (benchmarks/real_size_memory.py), one
    table per CPU kind."""
    if not VALIDATION.exists():
        return "## Validated at the real size\n\nNot yet measured: run benchmarks/real_size_memory.py --write-json."
    kinds = json.loads(VALIDATION.read_text(encoding="utf-8"))["kinds"]
    parts = ["""## Validated at the real size, on CPU

`benchmarks/real_size_memory.py` builds the Qwen2.5-0.5B architecture from its published configuration (random
weights) and runs the rtx4060 profile's stages on CPU through the command line, each in its own process. Measured:
the process peak RSS over each stage's training and evaluation; estimate: `tinyrlhf.memory` on CPU for the same
settings and the record's CPU kind, recomputed from the recorded measurements (`docs/real-size-memory.json`, one
record per CPU kind). A test keeps every ratio of a current record within 0.8-1.2. Each record says how it ran:
the dtype the models trained in (bf16: the card's, with `base.train_dtype=bf16`), the batch and chunk sizes the
peaks depend on, and the lengths."""]
    for kind, record in kinds.items():
        v, cpu = record["versions"], record["cpu"]
        rows = [[r["stage"], gib(r["measured_bytes"]), gib(r["estimate_bytes"]), f"{r['ratio']:.2f}"]
                for r in memory.validation_rows(record)]
        status = "" if record.get("current", True) else f" Not current: {record['why_not_current']}."
        parts.append(f"**{kind} CPU** ({cpu['model']}; flags {', '.join(cpu['flags'])}), measured {record['date']}, "
                     f"{record['machine']}; torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}. "
                     f"{_how_it_ran(record['settings'])}{status}\n\n" + table(["stage", "measured GiB", "estimate GiB", "measured / estimate"], rows))
    parts.append("""What this shows: the estimator's weights, adapters, optimizer state, activations, evaluation passes and
151,936-token logits at the real shapes, and that the GPU profile's code path (Qwen2 modules, LoRA on q/k/v/o_proj,
bitsandbytes int8/NF4, a pad token in a spare embedding row, the rollout patch, PPO's gradient checkpointing, and in a
bf16 record the card's dtypes under the trainers' bf16 autocast) runs at that size. What it does not: CUDA memory
(the GPU figures apply the same formulas and add the CUDA context and fragmentation), CUDA kernels' workspaces, and
the profile's full lengths (384 + 128 tokens; the estimator's length terms are checked at the record's lengths).""")
    return "\n\n".join(parts)


def _how_it_ran(st: dict) -> str:
    dtype = "bf16 weights, float32 trainable parameters (the card's dtypes)" if st.get("base.train_dtype") == "bf16" \
        else "float32 weights"
    return (f"Trained with {dtype}; SFT {st['sft.max_steps']} steps of {st['sft.batch_size']} sequences, each reward "
            f"model {st['rm.max_steps']} step(s) of {st['rm.batch_size']} pairs, PPO one update of "
            f"{st['ppo.ppo_batch']} rollouts in chunks of {st['ppo.rollout_chunk']}, trained {st['ppo.micro_batch']} "
            f"at a time, against each; prompts up to {st['data.max_prompt_tokens']} tokens, replies up to "
            f"{st['ppo.max_new']}.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", metavar="PATH", help="rewrite this file (atomically) instead of printing")
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        atomic_write_text(args.write, text)
        print(f"wrote {args.write}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
