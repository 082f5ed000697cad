"""The budget's speeds measured on this machine instead of assumed (issue 25): a few real steps of each kind at the
profile's model size, batch and lengths, on random weights (nothing to download), about a minute on a card.

- a LoRA training step of SFT (sft.batch_size sequences) and of a reward model (rm.batch_size pairs, no output
  projection), and a PPO micro-batch of the policy (ppo.micro_batch sequences): each as the share of the card's
  peak it reached (MFU), the figure `budget.predict` otherwise assumes;
- a rollout chunk generated (ppo.rollout_chunk replies of ppo.max_new tokens): seconds per decode step;
- reward scoring (a forward pass without gradients): tokens per second.

`calibration_from` turns timings into a `budget.Calibration`, so tests inject timings where no GPU is. On a
CPU the same measurement is the budget's validation (benchmarks/budget_validation.py)."""

from __future__ import annotations

import time

from . import budget
from .budget import Calibration, Machine
from .config import SCRATCH_MODEL, Profile
from .cpu import cpu_kind, flags
from .jobs import torch_threads
from .memory import ModelSpec, spec_for_profile

KINDS = ("sft", "rm", "ppo")


def sequence_tokens(profile: Profile) -> int:
    """Tokens per measured sequence: the profile's limits (prompt + reply), as padded work is counted."""
    return profile.data.max_prompt_tokens + profile.data.max_response_tokens


def batch_sequences(profile: Profile) -> dict[str, int]:
    """Sequences per measured training step of each kind."""
    return {"sft": profile.sft.batch_size, "rm": 2 * profile.rm.batch_size, "ppo": profile.ppo.micro_batch}


def calibration_from(profile: Profile, machine: Machine, timings: dict, source: str) -> Calibration:
    """A Calibration from measured seconds: `timings` holds one training step of each kind ("sft", "rm", "ppo"),
    "decode_step" (seconds per generated token of a rollout chunk) and "score_tokens_per_s"."""
    spec = spec_for_profile(profile)
    n, backbone = spec.n_params, spec.n_params - spec.vocab * spec.hidden
    peak = machine.bf16_tflops * 1e12
    tokens = sequence_tokens(profile)
    train = 6 if profile.sft.gradient_checkpointing else 4  # as budget.predict counts them
    per_token = {"sft": train * n, "rm": train * backbone, "ppo": train * n}
    mfu = {k: per_token[k] * batch_sequences(profile)[k] * tokens / timings[k] / peak for k in KINDS}
    mfu["score"] = 2 * backbone * timings["score_tokens_per_s"] / peak
    if "base" in timings:  # full training of the scratch base model: 6N per token
        mfu["base"] = 6 * n * profile.base.pretrain_batch * tokens / timings["base"] / peak
    return Calibration(mfu=mfu, decode_step_s=timings["decode_step"], source=source)


def _config(spec: ModelSpec):
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=spec.hidden, intermediate_size=spec.intermediate or 4 * spec.hidden,
                       num_hidden_layers=spec.n_layer, num_attention_heads=spec.n_head,
                       num_key_value_heads=spec.n_kv_head or spec.n_head, vocab_size=spec.vocab,
                       tie_word_embeddings=spec.tie_embeddings, max_position_embeddings=4096)


def _timed(fn, repeats: int, device: str) -> float:
    """Median of `repeats` after one warm-up call (a training run's steps are typical ones, not the best)."""
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(profile: Profile, device: str, *, threads: int = 0, repeats: int = 2) -> dict:
    """Seconds of one step of each kind on `device` with random weights at the profile's size (see the module)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GenerationConfig, Qwen2ForCausalLM

    spec = spec_for_profile(profile)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch_threads(threads):
        timings = {}
        if profile.base.model == SCRATCH_MODEL:  # the cpu profile pre-trains its base model: every weight trained
            full = Qwen2ForCausalLM(_config(spec)).to(device=device, dtype=dtype)
            ids = torch.randint(0, spec.vocab, (profile.base.pretrain_batch, sequence_tokens(profile)), device=device)
            timings["base"] = _timed(lambda: full(input_ids=ids).logits.float().mean().backward(), repeats, device)
        model = Qwen2ForCausalLM(_config(spec)).to(device=device, dtype=dtype)
        if profile.sft.gradient_checkpointing:  # as every stage trains (runtime.trainer_kwargs)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(r=profile.sft.lora_r, lora_alpha=profile.sft.lora_alpha,
                                                 target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        tokens = sequence_tokens(profile)

        def train_step(rows: int, head: bool):
            ids = torch.randint(0, spec.vocab, (rows, tokens), device=device)
            out = model(input_ids=ids) if head else model.base_model.model.model(input_ids=ids)
            (out.logits if head else out.last_hidden_state).float().mean().backward()

        timings |= {k: _timed(lambda k=k: train_step(batch_sequences(profile)[k], k != "rm"), repeats, device)
                    for k in KINDS}
        model.eval()
        p = profile.ppo
        prompt = torch.randint(0, spec.vocab, (p.rollout_chunk, profile.data.max_prompt_tokens), device=device)
        gen = GenerationConfig(max_new_tokens=p.max_new, min_new_tokens=p.max_new, do_sample=True, top_k=0,
                               pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            timings["decode_step"] = _timed(lambda: model.generate(input_ids=prompt, generation_config=gen), 1,
                                            device) / p.max_new
            ids = torch.randint(0, spec.vocab, (8, tokens), device=device)
            timings["score_tokens_per_s"] = 8 * tokens / _timed(
                lambda: model.base_model.model.model(input_ids=ids), repeats, device)
    return timings


def prediction_here(profile: Profile, report: dict, *, measure_card=measure, gpu_figures=None,
                    lengths: budget.Lengths | None = None) -> dict:
    """What 00_Setup and `tinyrlhf env` print: `profile`'s predicted hours on this machine. With a card, its
    throughput and a few real steps of each kind measured on it (`measure_card`, `gpu_figures`: injectable for
    tests), which replace the assumed MFU and decode step; without one, an RTX 4060's published figures and the
    assumptions. The CPU's reward-scoring rate is carried over from the reference by matrix-multiply speed."""
    cores = report["cpu"]["physical_cores"] or report["cpu"]["logical_cores"] or 1
    card = bool(report["cuda"]["devices"])
    machine = budget.this_machine(cores, (gpu_figures or budget.measured_gpu)() if card else None)
    calibration = None
    if card:
        calibration = calibration_from(profile, machine, measure_card(profile, "cuda"),
                                       source=f"measured on {machine.gpu}")
    lengths = lengths or budget.expected(profile)
    rows = budget.predict(profile, machine, lengths=lengths, calibration=calibration)
    bound = budget.predict(profile, machine, calibration=calibration)
    return {"machine": machine, "calibration": calibration, "lengths": lengths, "rows": rows, "bound": bound,
            "milestones": budget.milestones(profile, rows), "bound_milestones": budget.milestones(profile, bound)}


def describe(prediction: dict) -> list[str]:
    """The prediction's sources in lines of text."""
    m, cal = prediction["machine"], prediction["calibration"]
    lines = [f"on {m.source}",
             f"reward scoring on the CPU: {m.cpu_tokens_per_s:.0f} tokens/s on {m.cpu_threads} threads",
             f"lengths: {prediction['lengths'].source}"]
    if cal is None:
        lines.append("card speeds: assumed (MFU and decode step; no GPU here to measure them on)")
    else:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in cal.mfu.items())
        lines.append(f"card speeds {cal.source}: share of its peak {shares}; {1000 * cal.decode_step_s:.1f} ms "
                     f"per decode step")
    return lines


VALIDATION_FILE = budget.REFERENCE_FILE.parent / "budget-validation.json"


def prediction_for(profile: Profile, report: dict, lengths: budget.Lengths) -> dict:
    """The prediction for the profile about to run, as 04 prints it: on a card, prediction_here; on the CPU, every
    speed measured here at the profile's size (a few seconds; jobs' threads as the profile runs them) and the
    seconds per job (loading, setup) that benchmarks/budget_validation.py measured (docs/budget-validation.json).
    `lengths`: the prepared data's (budget.lengths_from_stats)."""
    if profile.device != "cpu" and report["cuda"]["devices"]:
        return prediction_here(profile, report, lengths=lengths)
    machine, cal = cpu_calibration(profile, repeats=1)
    cal = budget.Calibration(cal.mfu, cal.decode_step_s, cal.source,
                             read_validation().get("calibration", {}).get("job_overhead_s", {}))
    rows = budget.predict(profile, machine, lengths=lengths, calibration=cal)
    return {"machine": machine, "calibration": cal, "lengths": lengths, "rows": rows,
            "milestones": budget.milestones(profile, rows)}


def cpu_calibration(profile: Profile, *, repeats: int = 5) -> tuple[budget.Machine, Calibration]:
    """This CPU as the profile uses it: reward-model and PPO jobs on `profile.threads` threads each (scoring too),
    SFT in the notebook's process on every core."""
    import psutil

    threads, cores = profile.threads or 1, psutil.cpu_count(logical=False) or 1
    timings = measure(profile, "cpu", threads=threads, repeats=repeats)
    in_notebook = measure(profile, "cpu", threads=cores, repeats=repeats)  # SFT runs in the notebook's process
    timings |= {k: in_notebook[k] for k in ("sft", "base") if k in in_notebook}  # shares of 1 thread's peak
    machine = budget.Machine("this CPU", budget.cpu_gemm_gflops(threads) / 1000, 10.0, threads,
                             timings["score_tokens_per_s"], f"this CPU, {threads} thread(s) per job")
    return machine, calibration_from(profile, machine, timings, source="measured on this CPU")


def read_validation() -> dict:
    """The budget validation run on this kind of CPU (docs/budget-validation-<kind>.json) where there is one, else
    the first one (docs/budget-validation.json, an avx512 CPU): fixed seconds per job differ by kind."""
    import json

    for path in (VALIDATION_FILE.with_name(f"budget-validation-{cpu_kind(flags())}.json"), VALIDATION_FILE):
        if path.exists():
            return json.loads(path.read_text())
    return {}
