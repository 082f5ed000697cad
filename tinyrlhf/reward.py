"""Reward models at bf16, int8 (LLM.int8) and int4 (NF4), trained with TRL's RewardTrainer through LoRA, and what
quantization costs them: accuracy, agreement with bf16, footprint and CPU scoring throughput. A library: the stage
is in stages.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .base_model import load_tokenizer
from .chat import completion
from .config import INT8_CPU_MATMULS, PRECISIONS, SERVE_BITS, Profile, resolve_device
from .cpu import native_bf16
from .data import Pair, read_pairs
from .distributed import per_rank, rank_record
from .jobs import torch_threads
from .kernels import choose as choose_kernel
from .kernels import ARITHMETIC, dense_bytes, dense_copy, dtype_name, pin_dequantized
from .results import MemoryMeter, atomic_write_text
from .runtime import (
    drop_scratch,
    free_memory,
    lora_config,
    loss_curve,
    quiet_trainer,
    reward_compute_dtype,
    seed_everything,
    train_dtype,
    trainer_kwargs,
)
from .stats import mcnemar, spearman, wilson_ci

SCORE_HEAD = "score"  # the head of AutoModelForSequenceClassification for decoder models
PRECISION_FILE = "precision.json"


class RewardModelError(RuntimeError):
    """A reward model that cannot be trained or loaded; the message says why and what to do."""


def quantization_config(precision: str, *, double_quant: bool = True, compute_dtype=None):
    """bitsandbytes settings for a precision; None for bf16. The score head is never quantized: a quantized
    1-output head loses the small reward differences the whole model exists to produce."""
    import torch
    from transformers import BitsAndBytesConfig

    if precision not in PRECISIONS:
        raise RewardModelError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision == "bf16":
        return None
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[SCORE_HEAD])
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype or torch.float32,
                              llm_int8_skip_modules=[SCORE_HEAD])


class Float32Head(nn.Linear):
    """The score head computing in float32 from float32 inputs, autocast or not: the reward is a difference of two
    head outputs, and under a trainer's bf16 autocast (on a card) the head's matmul would otherwise run in bf16
    while CPU scoring runs it in float32. A class, not a hook, so PEFT's copy of the head (modules_to_save) keeps
    it."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def _keep_head_fp32(model) -> None:
    head = getattr(model, SCORE_HEAD)
    head.float()
    if type(head) is nn.Linear:
        head.__class__ = Float32Head
    else:  # another head type: at least fed float32
        head.register_forward_pre_hook(lambda _m, args: tuple(a.float() if torch.is_tensor(a) else a for a in args))


def load_backbone(init_path: str, precision: str, *, pad_token_id: int, device: str, double_quant: bool = True,
                  trust_remote_code: bool = False, compute_dtype=None, cpu_dtype: str = "auto"):
    """A 1-output sequence-classification model from `init_path` at `precision`. Returns (model, dtype name).

    Every precision computes in one dtype, `compute_dtype` (default: runtime.reward_compute_dtype, bf16 where the
    device runs it natively, else float32): the unquantized parts (embedding, norms) and the activations, so the
    arms differ only in their weights. bitsandbytes' CPU layers dequantize to the activations' dtype, so an int8 or
    NF4 model loaded in float32 computed in float32 even where bf16 is native (0.22-0.30x bf16's speed there).
    `cpu_dtype`: rm.cpu_dtype, for the default on a CPU."""
    import torch
    from transformers import AutoModelForSequenceClassification

    dtype = compute_dtype or reward_compute_dtype(device, cpu_dtype)
    qconfig = quantization_config(precision, double_quant=double_quant, compute_dtype=dtype)
    kwargs = {"num_labels": 1, "trust_remote_code": trust_remote_code, "dtype": dtype}
    if qconfig is not None:
        # "cuda" as this process's card (distributed.init chose it for each rank), not card 0
        where = torch.cuda.current_device() if device == "cuda" else device
        kwargs.update(quantization_config=qconfig, device_map={"": where})
    try:
        model = AutoModelForSequenceClassification.from_pretrained(init_path, **kwargs)
    except Exception as e:
        raise RewardModelError(f"cannot load {init_path} as a {precision} reward model "
                               f"({type(e).__name__}: {str(e)[:300]})") from None
    if qconfig is None:
        model.to(device)
    else:
        # The quantizing loader leaves its dense intermediates as freed but unreturned heap (measured at
        # Qwen2.5-0.5B's size, int8 from a bf16 checkpoint: 390 MiB back from malloc_trim); without this a reward
        # model trained from it peaked that much higher (benchmarks/real_size_memory.py)
        free_memory()
    model.config.pad_token_id = pad_token_id  # the head reads the last non-pad token
    _keep_head_fp32(model)
    name = dtype_name(dtype)
    compute = {"bf16": name, "int8": f"int8 weights, {name} compute", "int4": f"nf4 weights, {name} compute"}[precision]
    return model, compute


def _pairs_dataset(pairs: list[Pair]):
    from datasets import Dataset

    # RewardTrainer joins prompt + reply and appends EOS itself: replies get the shared leading space only.
    return Dataset.from_dict({"prompt": [p.prompt for p in pairs], "chosen": [completion(p.chosen) for p in pairs],
                              "rejected": [completion(p.rejected) for p in pairs]})


def train_reward_model(train, *, init_path: str, tokenizer, precision: str, out_dir, batch_size: int, lr: float,
                       epochs: float = 1.0, accum: int = 1, warmup: float = 0.0, max_steps: int = -1,
                       lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.0,
                       target_modules=("c_attn",), double_quant: bool = True, max_length: int = 256, seed: int = 0,
                       profile: Profile, callbacks=(), validation=None, eval_every: int = 25,
                       patience: int = 3) -> dict:
    """Train one reward model at `precision` (one function for all three) on `train` (a JSONL path or a list of
    pairs) and save it to `out_dir`. With `validation` pairs: evaluated every `eval_every` steps, stopped after
    `patience` evaluations without a better validation accuracy, and the best checkpoint kept (max_steps a cap).

    The backbone is frozen at its precision with LoRA on top; the score head is trained in full precision.
    """
    from transformers import EarlyStoppingCallback
    from trl import RewardConfig, RewardTrainer

    seed_everything(seed)
    out_dir = Path(out_dir)
    device = resolve_device(profile)
    # "auto": the device's own compute dtype (bf16 on a card, and on a CPU with native bf16); a set
    # base.train_dtype trains every precision in it (bf16 on a CPU: the card's dtypes, for the card-faithful check)
    compute_dtype = None if profile.base.train_dtype == "auto" else train_dtype(profile, device)
    model, compute = load_backbone(init_path, precision, pad_token_id=tokenizer.pad_token_id, device=device,
                                   double_quant=double_quant, trust_remote_code=profile.base.trust_remote_code,
                                   compute_dtype=compute_dtype, cpu_dtype=profile.rm.cpu_dtype)
    pin_dequantized(model)  # the arm's one arithmetic on every device (kernels.ARITHMETIC), LoRA wraps these layers
    lora = lora_config(model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules,
                       task_type="SEQ_CLS", modules_to_save=[SCORE_HEAD])
    # No peft.prepare_model_for_kbit_training: it would upcast the quantized models' norms and embedding to float32
    # while the bf16 arm keeps them in the compute dtype (PEFT freezes the backbone by itself).
    common = trainer_kwargs(profile, out_dir=out_dir, seed=seed, steps=max_steps if max_steps > 0 else 100)
    stopping = validation is not None
    if stopping:
        common |= early_stopping_args(eval_every, per_rank(batch_size, "rm.batch_size"))
    args = RewardConfig(
        **common, per_device_train_batch_size=per_rank(batch_size, "rm.batch_size"),
        gradient_accumulation_steps=accum, learning_rate=lr, num_train_epochs=epochs, max_steps=max_steps,
        warmup_steps=warmup, lr_scheduler_type="cosine", max_length=max_length)
    pairs = train if isinstance(train, list) else read_pairs(train)
    ranks = rank_record()
    stop = [EarlyStoppingCallback(early_stopping_patience=patience)] if stopping else []
    trainer = quiet_trainer(RewardTrainer(model=model, args=args, train_dataset=_pairs_dataset(pairs),
                                          eval_dataset=_pairs_dataset(validation) if stopping else None,
                                          processing_class=tokenizer, peft_config=lora,
                                          callbacks=[ranks, *stop, *callbacks]))
    # TRL casts every trainable parameter of a quantized model to bf16 (the QLoRA recipe), the score head too, and
    # a bf16 model's LoRA weights are bf16: Adam's steps (~lr) fall below half of bf16's spacing at their scale and
    # are lost. Before the optimizer exists (first train() call), every trained parameter goes to float32; the
    # frozen backbone keeps its compute dtype (PEFT casts LoRA's input to LoRA's dtype and its output back).
    keep_trainable_fp32(trainer.model)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    with MemoryMeter() as meter:
        trainer.train()
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_precision_file(out_dir, precision, init_path, compute, double_quant)
    drop_scratch(out_dir)
    return {"loss_curve": loss_curve(trainer), "train_seconds": meter.result["seconds"],
            "peak_memory": meter.result, "trainable_parameters": trainable, "compute_dtype": compute,
            "ranks": ranks.ranks, "steps": steps_record(trainer, max_steps, validation)}


def _write_precision_file(out_dir: Path, precision: str, init_path: str, compute: str, double_quant: bool) -> None:
    """What a saved reward model was trained at and from. A local backbone is recorded relative to this folder, so a
    moved or copied workdir loads its own SFT model."""
    local = Path(init_path).exists()
    recorded = os.path.relpath(Path(init_path).resolve(), out_dir.resolve()) if local else str(init_path)
    atomic_write_text(out_dir / PRECISION_FILE, json.dumps(
        {"precision": precision, "init_path": recorded, "init_is_local": local, "compute_dtype": compute,
         "double_quant": double_quant}, indent=2))


def early_stopping_args(eval_every: int, eval_batch: int) -> dict:
    """TrainingArguments for transformers' EarlyStoppingCallback: an evaluation and a checkpoint every `eval_every`
    steps (the best one is restored at the end), judged by TRL's validation accuracy."""
    return dict(eval_strategy="steps", eval_steps=eval_every, save_strategy="steps", save_steps=eval_every,
                save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_accuracy",
                greater_is_better=True, per_device_eval_batch_size=eval_batch)


def steps_record(trainer, max_steps: int, validation) -> dict:
    """How far a reward model trained: the steps taken, and with early stopping the step whose checkpoint was kept,
    whether it stopped before the cap, and the validation accuracy at each evaluation."""
    state = trainer.state
    out = {"trained": state.global_step, "cap": max_steps, "early_stopping": validation is not None}
    if validation is not None:
        best = state.best_model_checkpoint
        out |= {"kept": int(best.rsplit("-", 1)[1]) if best else state.global_step,
                "stopped_early": state.global_step < max_steps, "validation_pairs": len(validation),
                "validation_accuracy": [{"step": h["step"], "accuracy": h["eval_accuracy"]}
                                        for h in state.log_history if "eval_accuracy" in h]}
    return out


def keep_trainable_fp32(model) -> int:
    """Every parameter that trains (LoRA, a score or value head) in float32, whatever the model was loaded in.
    Returns how many parameters were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def pin_int8_matmul(model, matmul: str) -> int:
    """Fix the function an int8 model's layers multiply with, whatever train()/eval() later say.

    "dequantized": the int8 arm's one arithmetic (kernels.pin_dequantized: the int8 weights and row scales
    dequantized, times unquantized activations, as bitsandbytes' MatMul8bitFp computes it, computed by us) on every
    device. "llm.int8":
    bitsandbytes' own eval-mode dispatch (activations quantized too, outliers split out), kept for measuring how
    far it is from the arm's arithmetic (03's kernel check). Returns the number of int8 layers pinned.
    """
    import bitsandbytes as bnb

    if matmul not in INT8_CPU_MATMULS:
        raise RewardModelError(f"int8_cpu_matmul must be one of {', '.join(INT8_CPU_MATMULS)}; got {matmul!r}")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    for layer in layers:
        layer.__dict__.pop("forward", None)
        if matmul == "dequantized":
            pin_dequantized(layer)
        else:
            layer.training = False
    return len(layers)


def load_reward_model(path, *, trust_remote_code: bool = False, device: str = "cpu",
                      int8_cpu_matmul: str = "dequantized", cpu_kernel: str = "auto", compute_dtype=None,
                      serve_precision: str | None = None, cpu_dtype: str = "auto", own_dispatch: bool = False,
                      serve_group: int = 64):
    """Reload a saved reward model at the precision it was trained at, in eval mode. Returns (model, info).

    `serve_precision` loads its backbone at another precision instead (a bf16-trained model served at int8 or int4:
    the same adapter and head on the quantized backbone), for best-of-n's "served at low precision" arms; "w<k>"
    serves it at k-bit integer weights, `serve_group` inputs per scale (serve_at_bits), for the bits sweep.

    On the CPU a quantized model scores through the kernel `kernels.choose` picks from `cpu_kernel` (rm.cpu_kernel)
    and this machine: its dense copy (kernels.dense_copy), or bitsandbytes' layers, where an int8 model multiplies
    as `int8_cpu_matmul` says (pin_int8_matmul). `info["kernel"]` records the choice and why. `compute_dtype`
    overrides the dtype every precision computes in (e.g. float32, where a test claims exact equality); else a CPU
    computes in what `cpu_dtype` (rm.cpu_dtype) says. Off the dense copy a quantized model's layers are pinned to
    its arm's arithmetic (kernels.pin_dequantized) on every device; `own_dispatch` leaves bitsandbytes' own
    (LLM.int8, NF4's fused kernels), only to measure how far it is (compare_cpu_kernels)."""
    import psutil
    from peft import PeftModel

    info, init_path = _saved_precision(path)
    tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    precision = serve_precision or info["precision"]
    bits = served_bits(precision)
    # A bits-sweep arm: the bf16 backbone and adapter as trained, its backbone's weights then quantized by torchao
    backbone, _ = load_backbone(init_path, "bf16" if bits else precision, pad_token_id=tok.pad_token_id, device=device,
                                double_quant=info.get("double_quant", True), trust_remote_code=trust_remote_code,
                                compute_dtype=compute_dtype, cpu_dtype=cpu_dtype)
    dtype = backbone.dtype
    # torch_device: PEFT would otherwise read the adapter onto the device it infers (a GPU when one is visible)
    model = PeftModel.from_pretrained(backbone, str(path), torch_device=device)
    model.eval()
    kernel = None
    footprint = footprint_bytes(model)  # at its precision, before any dense copy
    if bits:
        layers = serve_at_bits(model, bits, serve_group)
        kernel = {"kernel": "torchao", "dtype": dtype_name(dtype), "why": f"{layers} backbone layers' weights at {bits} "
                  f"bits (torchao), dequantized to {dtype_name(dtype)} on every call"}
        return model, info | {"tokenizer": tok, "int8_matmul": None, "kernel": kernel, "footprint_bytes": footprint,
                              "trained_precision": info["precision"], "precision": precision, "serve_group": serve_group}
    if device == "cpu":
        kernel = choose_kernel(precision, setting=cpu_kernel, compute_dtype=dtype,
                               dense_bytes=dense_bytes(model, dtype), available_bytes=psutil.virtual_memory().available,
                               native_bf16=native_bf16(), int8_matmul=int8_cpu_matmul)
        if precision != "bf16" and kernel["kernel"] == "dense":
            dense_copy(model, dtype)  # before any forward (an AVX512-BF16 CPU repacks NF4 weights at the first)
    matmul = None
    if precision != "bf16" and (kernel is None or kernel["kernel"] != "dense"):
        # the arm's one arithmetic on every device; bitsandbytes' own dispatch only where asked for, to compare
        matmul = int8_cpu_matmul if precision == "int8" else "dequantized"
        if own_dispatch:
            matmul = "llm.int8" if precision == "int8" else None
        if matmul is not None and precision == "int8":
            pin_int8_matmul(model, matmul)
        elif matmul is not None:
            pin_dequantized(model)
    return model, info | {"tokenizer": tok, "int8_matmul": matmul, "kernel": kernel, "footprint_bytes": footprint,
                          "trained_precision": info["precision"], "precision": precision}


def _saved_precision(path) -> tuple[dict, str]:
    """A saved reward model's precision record and the backbone it was trained from."""
    path = Path(path)
    info_path = path / PRECISION_FILE
    if not info_path.exists():
        raise RewardModelError(f"{path} holds no trained reward model: run 03_Reward_Modeling first")
    info = json.loads(info_path.read_text())
    return info, str((path / info["init_path"]).resolve()) if info.get("init_is_local") else info["init_path"]


def load_for_scoring(path, *, device: str, trust_remote_code: bool = False, int8_cpu_matmul: str = "dequantized",
                     cpu_kernel: str = "auto", serve_precision: str | None = None, cpu_dtype: str = "auto",
                     serve_group: int = 64):
    """A reward model for scoring with no policy training beside it (03's test pairs and pool, 04's cross matrix):
    loaded as PPO's CPU scoring loads it (its kernel, the host's compute dtype) and, when `device` is the card,
    moved there as its dense copy whatever the CPU's memory, so the card's scores are the CPU path's to float
    rounding: every arm ranks the pool with the arithmetic PPO's rewards come from (bitsandbytes' CUDA int8 kernel,
    LLM.int8, would not). Returns (model, info) as load_reward_model; info["arithmetic"] names what it computes."""
    on_card = device != "cpu"
    # On the card in the card's compute dtype (what its reward models trained in), whatever the host CPU's rule
    model, info = load_reward_model(path, trust_remote_code=trust_remote_code, device="cpu",
                                    int8_cpu_matmul=int8_cpu_matmul, cpu_kernel="dense" if on_card else cpu_kernel,
                                    serve_precision=serve_precision, cpu_dtype=cpu_dtype, serve_group=serve_group,
                                    compute_dtype=reward_compute_dtype("cuda") if on_card else None)
    if on_card:
        model.to(device)
    return model, info | {"score_device": device, "arithmetic": scoring_arithmetic(info, device)}


def scoring_arithmetic(info: dict, device: str) -> str:
    """What a loaded reward model computes, in words: its precision's arithmetic (kernels.ARITHMETIC), the dtype,
    the device and the path (dense copy or pinned bitsandbytes layers)."""
    precision, kernel = info["precision"], info.get("kernel") or {"kernel": "dense"}
    dtype = kernel.get("dtype") or info.get("compute_dtype")
    if bits := served_bits(precision):
        return (f"int{bits} weights (asymmetric, a scale and zero point per {info.get('serve_group')} inputs) "
                f"dequantized to the compute dtype, times unquantized activations; {dtype} on {device}, torchao layers")
    path = "dense copy" if kernel["kernel"] == "dense" else f"bitsandbytes layers ({info.get('int8_matmul')})"
    return f"{ARITHMETIC[precision]}; {dtype} on {device}, {path if precision != 'bf16' else 'its own weights'}"


def served_bits(precision: str) -> int | None:
    """k of a bits-sweep precision "w<k>" (SERVE_BITS); None for bf16, int8 and int4."""
    return int(precision[1:]) if precision.startswith("w") and precision[1:].isdigit() else None


def serve_at_bits(model, bits: int, group_size: int) -> int:
    """Quantize every backbone linear layer of a loaded reward model (LoRA's base layers, not its adapters, not the
    score head: as the served int8/NF4 arms are) to `bits`-bit integer weights, asymmetric, one scale and zero point
    per `group_size` inputs: torchao's IntxWeightOnlyConfig, whose forward dequantizes them to the activations'
    dtype on the CPU and on a card alike. torchao (0.18, 2026-08, with torch's releases) over optimum-quanto (no 3-bit
    type, last release 2025-03) and HQQ (last release 2025-10): any width from 1 to 8 bits, and transformers' own
    TorchAoConfig to hold it to (tests/test_bits.py). Returns the number of layers quantized."""
    from torchao.quantization import IntxWeightOnlyConfig, MappingType, quantize_
    from torchao.quantization.granularity import PerGroup

    if bits not in SERVE_BITS:
        raise RewardModelError(f"cannot serve at {bits} bits; eval.serve_bits takes {', '.join(map(str, SERVE_BITS))}")
    chosen = [name for name, m in model.named_modules() if _backbone_linear(m, name)]
    bad = [name for name in chosen if model.get_submodule(name).in_features % group_size]
    if bad:
        raise RewardModelError(f"eval.serve_group={group_size} does not divide the inputs of {bad[0]} "
                               f"({model.get_submodule(bad[0]).in_features}): choose 32, 64 or 128 that does")
    config = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerGroup(group_size),
                                  mapping_type=MappingType.ASYMMETRIC)
    quantize_(model, config, filter_fn=_backbone_linear)
    return len(chosen)


def _backbone_linear(module, name: str) -> bool:
    return type(module) is nn.Linear and "lora_" not in name and SCORE_HEAD not in name.split(".")


def score_texts(model, tokenizer, prompts: list[str], replies: list[str], batch_size: int = 32) -> list[float]:
    """Reward of each prompt + reply, formatted exactly as in training (reply, then EOS)."""
    import torch

    device = next(model.parameters()).device
    texts = [p + completion(r, tokenizer.eos_token) for p, r in zip(prompts, replies)]
    tokenizer.padding_side = "right"
    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i: i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            out += model(**enc).logits.squeeze(-1).float().cpu().tolist()
    return out


def evaluate_reward_model(model, tokenizer, pairs: list[Pair], *, reference: dict | None = None) -> dict:
    """Pairwise accuracy with a 95% CI, overall and per category of pair (when the pairs have one), mean margin,
    CPU scoring throughput; agreement with `reference` (the bf16 model's evaluation) when given, and McNemar's
    paired test against it. Scores are computed in eval() mode."""
    prompts = [p.prompt for p in pairs]
    t0 = time.perf_counter()
    chosen = score_texts(model, tokenizer, prompts, [p.chosen for p in pairs])
    rejected = score_texts(model, tokenizer, prompts, [p.rejected for p in pairs])
    seconds = time.perf_counter() - t0
    wins = [c > r for c, r in zip(chosen, rejected)]
    n = len(pairs)
    out = {"n_test_pairs": n, "accuracy": sum(wins) / n, "accuracy_ci95": wilson_ci(sum(wins), n),
           "by_category": accuracy_by_category(pairs, wins),
           "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / n,
           "throughput_pairs_per_s": n / seconds, "scores_chosen": chosen, "scores_rejected": rejected, "wins": wins}
    if reference is not None:
        ref_wins = reference["wins"]
        out["agreement_with_bf16"] = sum(a == b for a, b in zip(wins, ref_wins)) / n
        out["rank_correlation_with_bf16"] = spearman(chosen + rejected,
                                                     reference["scores_chosen"] + reference["scores_rejected"])
        out["mcnemar_vs_bf16"] = mcnemar(ref_wins, wins)
    return out


def cpu_kernel_variants(precision: str) -> list[tuple[str, str, str]]:
    """(name, rm.cpu_kernel, rm.int8_cpu_matmul) of every CPU path a reward model at `precision` can score through;
    the names are those kernels.choose gives."""
    if precision == "int8":
        return [("dense", "dense", "dequantized"),
                *((f"bitsandbytes {m}", "bitsandbytes", m) for m in INT8_CPU_MATMULS)]
    if precision == "int4":
        return [("dense", "dense", "dequantized"), ("bitsandbytes", "bitsandbytes", "dequantized"),
                ("bitsandbytes own dispatch", "bitsandbytes", "own")]
    return []


def compare_cpu_kernels(path, tokenizer, pairs: list[Pair], evaluation: dict, used: str, *,
                        trust_remote_code: bool = False, compute_dtype=None, cpu_dtype: str = "auto") -> dict:
    """Score `pairs` again through every other CPU path of the saved reward model at `path` and compare with
    `evaluation` (made through the kernel named `used`): per path, the fraction of pairs ordered the same way, the
    largest score difference (beside the mean |margin|), accuracy and pairs per second. The record behind the claim
    that the chosen kernel measures the same reward model as bitsandbytes' own layers."""
    precision = json.loads((Path(path) / PRECISION_FILE).read_text())["precision"]
    scores = evaluation["scores_chosen"] + evaluation["scores_rejected"]
    others, failed, loaded = {}, {}, {}
    for name, kernel, matmul in cpu_kernel_variants(precision):
        if name == used or (kernel == "dense" and used != "dense"):  # a dense copy refused for memory is not made
            continue
        try:
            own = matmul == "own"  # NF4 through bitsandbytes' own dispatch (its fused kernels where it picks them)
            if (kernel, own) not in loaded:  # one load per kernel: the int8 matmuls are pinned on the same layers
                loaded = {(kernel, own): load_reward_model(path, trust_remote_code=trust_remote_code, device="cpu",
                                                           cpu_kernel=kernel, compute_dtype=compute_dtype,
                                                           cpu_dtype=cpu_dtype, own_dispatch=own)[0]}
            model = loaded[(kernel, own)]
            if precision == "int8" and kernel == "bitsandbytes":
                pin_int8_matmul(model, matmul)
            again = evaluate_reward_model(model, tokenizer, pairs)
        except Exception as e:  # a comparison that cannot run is recorded; the arm's own model is fine
            failed[name] = f"{type(e).__name__}: {e}"[:300]
            continue
        others[name] = {"same_order": sum(a == b for a, b in zip(evaluation["wins"], again["wins"])) / len(pairs),
                        "max_abs_score_difference": max(abs(a - b) for a, b in zip(
                            scores, again["scores_chosen"] + again["scores_rejected"])),
                        "accuracy": again["accuracy"], "pairs_per_s": again["throughput_pairs_per_s"]}
    return {"used": used, "accuracy": evaluation["accuracy"], "pairs_per_s": evaluation["throughput_pairs_per_s"],
            "mean_abs_margin": sum(abs(c - r) for c, r in zip(evaluation["scores_chosen"],
                                                               evaluation["scores_rejected"])) / len(pairs),
            "others": others, "failed": failed}


def accuracy_by_category(pairs: list[Pair], wins: list[bool]) -> dict:
    """{category: {"n", "accuracy", "accuracy_ci95"}} for the pairs that carry a category."""
    groups: dict[str, list[bool]] = {}
    for pair, win in zip(pairs, wins):
        if pair.category:
            groups.setdefault(pair.category, []).append(win)
    return {c: {"n": len(w), "accuracy": sum(w) / len(w), "accuracy_ci95": wilson_ci(sum(w), len(w))}
            for c, w in sorted(groups.items())}


def above_chance(record: dict) -> bool:
    """A reward model's test accuracy above chance in every category (overall when the pairs carry none): the lower
    end of its 95% Wilson interval above 0.5, so a model at chance does not pass by luck."""
    cells = list(record.get("by_category", {}).values()) or [record]
    return all(c["accuracy_ci95"][0] > 0.5 for c in cells)


def grouped_reasons(failures: list[tuple[str, str]]) -> str:
    """"reason (who)" for every failure, those sharing a reason named once, the reason first (a legend or table
    cell shortens the end): "killed (RM seed 0, RM seed 1)". For failed reward models here and failed PPO runs
    (evaluate)."""
    by_reason: dict[str, list[str]] = {}
    for who, reason in failures:
        by_reason.setdefault(str(reason), []).append(who)
    return "; ".join(f"{reason} ({', '.join(who)})" for reason, who in by_reason.items())


def seed_summary(records: list[dict]) -> dict:
    """One arm over its reward-model seeds: status ("ok" when every seed trained, "partial", "failed"), accuracy's
    mean and spread, per category, and the share of seeds above chance in every category."""
    ok = [r for r in records if r.get("status") == "ok"]
    first = records[0]
    out = {"precision": first["precision"], "seeds": [r["seed"] for r in records],
           "status": "ok" if len(ok) == len(records) else "partial" if ok else "failed",
           "reason": None if len(ok) == len(records) else grouped_reasons(
               [(f"seed {r['seed']}", r.get("reason")) for r in records if r.get("status") != "ok"]),
           "label_noise": first.get("label_noise") or 0.0}
    if not ok:
        return out | {"accuracy_mean": None, "accuracy_sd": None, "above_chance_share": None, "by_category": {}}
    acc = np.array([r["accuracy"] for r in ok])
    categories = sorted({c for r in ok for c in r.get("by_category", {})})
    return out | {
        "accuracy_mean": float(acc.mean()), "accuracy_sd": float(acc.std(ddof=1)) if len(ok) > 1 else None,
        "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
        "above_chance_share": sum(above_chance(r) for r in ok) / len(records),
        "by_category": {c: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
                        for c in categories
                        for v in [[r["by_category"][c]["accuracy"] for r in ok if c in r["by_category"]]]},
        "footprint_bytes": int(np.mean([r["footprint_bytes"] for r in ok])),
        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in ok]))}


def footprint_bytes(model) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(base.get_memory_footprint())


# ------------------------------------------------------------------------------- scoring generated token ids
class _Backbone(nn.Module):
    """What TRL calls as `getattr(rm, rm.base_model_prefix)`: runs the RM's transformer on the RM's device with the
    RM's threads, in length-sorted groups trimmed of their padding (reward.padding_free_groups)."""

    def __init__(self, owner):
        super().__init__()
        object.__setattr__(self, "owner", owner)  # not a submodule: .to()/.train() must not reach the RM

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        owner = self.owner
        owner.caller_device = input_ids.device
        t0 = time.perf_counter()
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if position_ids is None:  # the model's own default, made explicit so that trimming columns keeps it
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        hidden = None
        with torch.no_grad(), torch_threads(owner.threads):
            for rows, spans in padding_free_groups(mask, owner.tokens_per_batch):
                packed = [_packed(t, rows, spans) for t in (input_ids, mask.long(), position_ids)]
                out = owner.lm_backbone(**{k: v.to(owner.device) for k, v in zip(
                    ("input_ids", "attention_mask", "position_ids"), packed)},
                    output_hidden_states=True, return_dict=True, use_cache=False)
                last = out.hidden_states[-1]
                if hidden is None:
                    hidden = last.new_zeros((*input_ids.shape, last.shape[-1]))
                for j, (row, (lo, hi)) in enumerate(zip(rows, spans)):
                    hidden[row, lo:hi] = last[j, : hi - lo]
        owner.seconds += time.perf_counter() - t0
        owner.tokens += int(mask.sum())
        # Padding positions hold zeros; the reward is read at each row's last real token. Hidden states stay on
        # the RM's device: the head runs there too.
        return SimpleNamespace(hidden_states=(hidden,))


def padding_free_groups(mask: torch.Tensor, tokens_per_batch: int) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Groups of rows of a [batch, length] attention mask, as (rows, [(first, end) column of each row's real
    tokens]): rows sorted by the length of that span and grouped while rows x longest span stays within
    `tokens_per_batch` (0: all rows, in order, in one group).

    Each group is scored packed (_packed): every row's span moved to the left edge, positions and mask moved with
    it. A causal model's output at a real token depends only on the real tokens before it and their positions, so
    the scores are those of the padded batch up to float rounding, for far less work: rollouts are left-padded
    queries and right-padded replies of very different lengths."""
    n, width = mask.shape
    real = mask.any(1)
    first = torch.where(real, mask.float().argmax(1), 0).tolist()
    end = torch.where(real, width - mask.flip(1).float().argmax(1), 1).tolist()
    spans = [(lo, hi) for lo, hi in zip(first, end)]
    if not tokens_per_batch:
        return [(list(range(n)), spans)]
    order = sorted(range(n), key=lambda i: spans[i][1] - spans[i][0])
    groups, current = [], []
    for i in order:  # ascending length: the newest row is the group's longest
        if current and (len(current) + 1) * (spans[i][1] - spans[i][0]) > tokens_per_batch:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    return [(g, [spans[i] for i in g]) for g in groups]


def _packed(tensor: torch.Tensor, rows: list[int], spans: list[tuple[int, int]]) -> torch.Tensor:
    """The rows' spans of `tensor`, each moved to the left edge of a [rows, longest span] tensor of zeros."""
    out = tensor.new_zeros((len(rows), max(hi - lo for lo, hi in spans)))
    for j, (row, (lo, hi)) in enumerate(zip(rows, spans)):
        out[j, : hi - lo] = tensor[row, lo:hi]
    return out


class _Score(nn.Module):
    """What TRL calls as `rm.score`: the RM's head on the RM's device, scores returned to the caller's device."""

    def __init__(self, owner):
        super().__init__()
        object.__setattr__(self, "owner", owner)

    def forward(self, hidden):
        owner = self.owner
        t0 = time.perf_counter()
        with torch.no_grad():
            scores = owner.head(hidden.to(owner.device))
        owner.seconds += time.perf_counter() - t0
        owner.calls += 1
        return scores.to(owner.caller_device)


class CPURewardModel(nn.Module):
    """A reward model that stays on its device (the CPU) whatever the trainer asks.

    TRL's PPOTrainer calls `reward_model.to(accelerator.device)`, which bitsandbytes 8-bit models refuse and which
    would put the RM on the GPU; it then scores through `getattr(rm, rm.base_model_prefix)` and `rm.score`. Here
    `.to()` is a no-op, inputs move to the RM's device, scores move back to the caller's device, and the RM stays
    in eval() mode. Scoring runs with `threads` torch threads (0: as they are) in length-sorted groups of at most
    `tokens_per_batch` tokens (0: the batch as given). `seconds` and `tokens` count scoring time and real tokens.
    """

    base_model_prefix = "backbone"

    def __init__(self, reward_model, device: str = "cpu", *, threads: int = 0, tokens_per_batch: int = 1024):
        super().__init__()
        inner = reward_model.get_base_model() if hasattr(reward_model, "get_base_model") else reward_model
        # Plain attributes, not submodules, so nothing the trainer does to this wrapper reaches the RM.
        object.__setattr__(self, "reward_model", reward_model)
        object.__setattr__(self, "lm_backbone", getattr(inner, inner.base_model_prefix))
        object.__setattr__(self, "head", inner.score)
        self.device = torch.device(device)
        self.caller_device = self.device
        self.threads, self.tokens_per_batch = threads, tokens_per_batch
        self.seconds = 0.0
        self.tokens = 0
        self.calls = 0
        self.backbone = _Backbone(self)
        self.score = _Score(self)
        reward_model.eval()

    def to(self, *args, **kwargs):
        return self

    def train(self, mode: bool = True):
        self.reward_model.eval()
        return super().train(False)

    def forward(self, input_ids, attention_mask=None):
        """Scores of right-padded sequences at their last real token (the TRL path does the same indexing)."""
        hidden = self.backbone(input_ids, attention_mask=attention_mask).hidden_states[-1]
        scores = self.score(hidden).squeeze(-1)
        last = (attention_mask.sum(1) - 1) if attention_mask is not None else torch.full(
            (scores.shape[0],), scores.shape[1] - 1)
        return scores[torch.arange(scores.shape[0]), last.to(scores.device)]



def score_rollouts(reward_model, queries, responses, *, pad_token_id: int, eos_token_id: int,
                   missing_eos_penalty: float | None) -> torch.Tensor:
    """Scores of generated replies exactly as TRL 1.12's PPO rollout computes them: each response is cut after its
    first EOS (trl's truncate_response), appended to its left-padded query, scored at its last real token by trl's
    get_reward, and lowered by `missing_eos_penalty` when it holds no EOS (PPOConfig.missing_eos_penalty).

    The one scoring path: PPO's rewards and every evaluation score (proxy or judge reward model) go through it.
    """
    from trl.experimental.ppo.ppo_trainer import truncate_response
    from trl.experimental.utils import get_reward

    context_length = queries.shape[1]
    responses = truncate_response(eos_token_id, pad_token_id, responses)
    with torch.no_grad():
        _, scores, _ = get_reward(reward_model, torch.cat((queries, responses), 1), pad_token_id, context_length)
    scores = scores.float()
    if missing_eos_penalty:
        scores[~torch.any(responses == eos_token_id, dim=-1)] -= missing_eos_penalty
    return scores
