"""Reward models at bf16, int8 (LLM.int8) and int4 (NF4), trained with TRL's RewardTrainer through LoRA, and what
quantization costs them: accuracy, agreement with bf16, footprint, time, memory and CPU scoring throughput."""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
import weakref
from pathlib import Path

from .chat import completion
from .config import PRECISIONS, Paths, Profile, resolve_device
from .data import Pair, data_files, read_pairs
from .memory import measured_vs_estimate
from .results import (MemoryMeter, atomic_write_json, atomic_write_text, current_rss_bytes, data_source_of, manifest,
                      read_json, reusable)
from .runtime import drop_scratch, free_memory, lora_config, loss_curve, reward_compute_dtype, trainer_kwargs

# bitsandbytes logs on every int8 matmul that float32 inputs are cast to float16; it is expected, and one line
# per layer per step buries the notebook's output.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    lambda record: not record.getMessage().startswith("MatMul8bitLt: inputs will be cast"))

SCORE_HEAD = "score"  # the head of AutoModelForSequenceClassification for decoder models
PRECISION_FILE = "precision.json"


class RewardModelError(RuntimeError):
    """A reward model that cannot be trained or loaded; the message says why and what to do."""


def rm_dir(paths: Paths, precision: str) -> Path:
    return paths.models / "rm" / precision


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


def _keep_head_fp32(model) -> None:
    """Score head in float32, fed float32: the reward is a difference of two head outputs."""
    import torch

    head = getattr(model, SCORE_HEAD)
    head.float()
    head.register_forward_pre_hook(lambda _m, args: tuple(a.float() if torch.is_tensor(a) else a for a in args))


def load_backbone(init_path: str, precision: str, *, profile: Profile, pad_token_id: int, device: str,
                  double_quant: bool = True):
    """A 1-output sequence-classification model from `init_path` at `precision`. Returns (model, dtype name)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    dtype = reward_compute_dtype(device)
    qconfig = quantization_config(precision, double_quant=double_quant, compute_dtype=dtype)
    kwargs = {"num_labels": 1, "trust_remote_code": profile.base.trust_remote_code}
    if qconfig is None:
        kwargs["dtype"] = dtype
    else:
        kwargs.update(quantization_config=qconfig, device_map={"": device}, dtype=torch.float32)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(init_path, **kwargs)
    except Exception as e:
        raise RewardModelError(f"cannot load {init_path} as a {precision} reward model "
                               f"({type(e).__name__}: {str(e)[:300]})") from None
    if qconfig is None:
        model.to(device)
    model.config.pad_token_id = pad_token_id  # the head reads the last non-pad token
    _keep_head_fp32(model)
    compute = {"bf16": str(dtype).replace("torch.", ""), "int8": "int8 weights, LLM.int8 matmul",
               "int4": f"nf4 weights, {str(dtype).replace('torch.', '')} compute"}[precision]
    return model, compute


def _pairs_dataset(pairs: list[Pair]):
    from datasets import Dataset

    # RewardTrainer joins prompt + reply and appends EOS itself: replies get the shared leading space only.
    return Dataset.from_dict({"prompt": [p.prompt for p in pairs], "chosen": [completion(p.chosen) for p in pairs],
                              "rejected": [completion(p.rejected) for p in pairs]})


def train_reward_model(train_path, *, init_path: str, tokenizer, precision: str, out_dir, batch_size: int, lr: float,
                       epochs: float = 1.0, accum: int = 1, warmup: float = 0.0, max_steps: int = -1,
                       lora_r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.0,
                       target_modules=("c_attn",), double_quant: bool = True, max_length: int = 256, seed: int = 0,
                       profile: Profile, progress: bool = True) -> dict:
    """Train one reward model at `precision` (one function for all three) and save it to `out_dir`.

    The backbone is frozen at its precision with LoRA on top; the score head is trained in full precision.
    """
    from peft import prepare_model_for_kbit_training
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    # The new score head and the LoRA adapter are initialised before the Trainer seeds anything: seed here, or
    # they depend on whatever ran earlier in the process.
    set_seed(seed)
    out_dir = Path(out_dir)
    device = resolve_device(profile)
    model, compute = load_backbone(init_path, precision, profile=profile, pad_token_id=tokenizer.pad_token_id,
                                   device=device, double_quant=double_quant)
    lora = lora_config(model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules,
                       task_type="SEQ_CLS", modules_to_save=[SCORE_HEAD])
    if precision != "bf16":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    args = RewardConfig(
        **trainer_kwargs(profile, out_dir=out_dir, seed=seed, progress=progress,
                         steps=max_steps if max_steps > 0 else 100),
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=accum, learning_rate=lr,
        num_train_epochs=epochs, max_steps=max_steps, warmup_steps=warmup, lr_scheduler_type="cosine",
        max_length=max_length)
    trainer = RewardTrainer(model=model, args=args, train_dataset=_pairs_dataset(read_pairs(train_path)),
                            processing_class=tokenizer, peft_config=lora)
    # TRL casts every trainable parameter of a quantized model to bf16 (the QLoRA recipe), the score head too;
    # put the head back in float32 before the optimizer is created on the first train() call.
    for name, param in trainer.model.named_parameters():
        if param.requires_grad and SCORE_HEAD in name.split("."):
            param.data = param.data.float()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    with MemoryMeter() as meter:
        trainer.train()
    trainer.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    atomic_write_text(out_dir / PRECISION_FILE, json.dumps(
        {"precision": precision, "init_path": str(init_path), "compute_dtype": compute,
         "double_quant": double_quant}, indent=2))
    drop_scratch(out_dir)
    return {"loss_curve": loss_curve(trainer), "train_seconds": meter.result["seconds"],
            "peak_memory": meter.result, "trainable_parameters": trainable, "compute_dtype": compute}


def load_reward_model(path, *, profile: Profile, device: str = "cpu"):
    """Reload a saved reward model at the precision it was trained at, in eval mode. Returns (model, info)."""
    from peft import PeftModel

    from .base_model import load_tokenizer

    path = Path(path)
    info_path = path / PRECISION_FILE
    if not info_path.exists():
        raise RewardModelError(f"{path} holds no trained reward model: run 03_Reward_Modeling first")
    info = json.loads(info_path.read_text())
    tok = load_tokenizer(profile, None, path=path)
    backbone, _ = load_backbone(info["init_path"], info["precision"], profile=profile, pad_token_id=tok.pad_token_id,
                                device=device, double_quant=info.get("double_quant", True))
    model = PeftModel.from_pretrained(backbone, str(path))
    model.eval()  # bitsandbytes int8 on CPU only takes its int8 path in eval mode
    return model, info | {"tokenizer": tok}


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


def wilson_ci(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """95% Wilson score interval for a proportion (a closed form: no stats library needed)."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def spearman(a: list[float], b: list[float]) -> float:
    import pandas as pd

    # Spearman = Pearson on ranks; pandas' method="spearman" would pull in scipy for this one line.
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def evaluate_reward_model(model, tokenizer, pairs: list[Pair], *, reference: dict | None = None) -> dict:
    """Pairwise accuracy with a 95% CI, mean margin, CPU scoring throughput; agreement with `reference` (the bf16
    model's evaluation) when given. Scores are computed in eval() mode."""
    prompts = [p.prompt for p in pairs]
    t0 = time.perf_counter()
    chosen = score_texts(model, tokenizer, prompts, [p.chosen for p in pairs])
    rejected = score_texts(model, tokenizer, prompts, [p.rejected for p in pairs])
    seconds = time.perf_counter() - t0
    wins = [c > r for c, r in zip(chosen, rejected)]
    n = len(pairs)
    out = {"n_test_pairs": n, "accuracy": sum(wins) / n, "accuracy_ci95": wilson_ci(sum(wins), n),
           "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / n,
           "throughput_pairs_per_s": n / seconds, "scores_chosen": chosen, "scores_rejected": rejected}
    if reference is not None:
        ref_wins = [c > r for c, r in zip(reference["scores_chosen"], reference["scores_rejected"])]
        out["agreement_with_bf16"] = sum(a == b for a, b in zip(wins, ref_wins)) / n
        out["rank_correlation_with_bf16"] = spearman(chosen + rejected,
                                                     reference["scores_chosen"] + reference["scores_rejected"])
    return out


def footprint_bytes(model) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(base.get_memory_footprint())


def _one_precision(profile: Profile, paths: Paths, precision: str, init_path: str, tokenizer, test_pairs,
                   reference, progress: bool) -> tuple[dict, dict | None]:
    r = profile.rm
    out = rm_dir(paths, precision)
    run = train_reward_model(
        data_files(paths)["train"], init_path=init_path, tokenizer=tokenizer, precision=precision, out_dir=out,
        batch_size=r.batch_size, lr=r.lr, epochs=r.epochs, accum=r.accum, warmup=r.warmup, max_steps=r.max_steps,
        lora_r=r.lora_r, lora_alpha=r.lora_alpha, lora_dropout=r.lora_dropout, target_modules=r.target_modules,
        double_quant=r.double_quant, max_length=profile.data.max_prompt_tokens + profile.data.max_response_tokens + 1,
        seed=profile.seed, profile=profile, progress=progress)
    free_memory()
    # Evaluate the model as saved: this also proves it reloads at its precision. Scored on CPU, where PPO scores.
    model, _ = load_reward_model(out, profile=profile, device="cpu")
    ev = evaluate_reward_model(model, tokenizer, test_pairs, reference=reference)
    rec = {"status": "ok", "reason": None, "accuracy": ev["accuracy"], "accuracy_ci95": ev["accuracy_ci95"],
           "mean_margin": ev["mean_margin"], "n_test_pairs": ev["n_test_pairs"],
           "agreement_with_bf16": ev.get("agreement_with_bf16", 1.0 if precision == "bf16" else None),
           "rank_correlation_with_bf16": ev.get("rank_correlation_with_bf16", 1.0 if precision == "bf16" else None),
           "footprint_bytes": footprint_bytes(model), "train_seconds": run["train_seconds"],
           "peak_memory_bytes": run["peak_memory"]["peak_bytes"], "peak_memory": run["peak_memory"],
           "memory": measured_vs_estimate(profile, f"rm_{precision}", run["peak_memory"]),
           "throughput_pairs_per_s": ev["throughput_pairs_per_s"], "compute_dtype": run["compute_dtype"],
           "trainable_parameters": run["trainable_parameters"],
           "loss_curve": [h["loss"] for h in run["loss_curve"]]}
    # Release and verify: the model object must be collectable once we drop it.
    alive = weakref.ref(model)
    del model
    free_memory()
    rec["released"] = alive() is None
    rec["rss_after_release_bytes"] = current_rss_bytes()
    return rec, ev


def run_reward_models(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """The 03 notebook's stage: every precision in turn from the SFT model; a failure is recorded, the rest go on."""
    from .base_model import load_tokenizer
    from .sft import sft_dirs

    result_path = paths.results / "rm_results.json"
    config_hash = profile.section_hash("data", "base", "sft", "rm")
    required = [rm_dir(paths, p) / PRECISION_FILE for p in profile.rm.precisions]
    if not force and reusable(result_path, config_hash, required):
        return read_json(result_path) | {"reused": True}
    init_path = sft_dirs(paths)["merged"]
    if not (init_path / "config.json").exists():
        raise RewardModelError(f"no SFT model in {init_path}: run 02_SFT_Finetuning first")
    tokenizer = load_tokenizer(profile, paths, path=init_path)
    test_pairs = read_pairs(data_files(paths)["test"])[: profile.rm.eval_pairs]

    t0 = time.perf_counter()
    precisions, reference = {}, None
    for precision in profile.rm.precisions:
        try:
            rec, ev = _one_precision(profile, paths, precision, str(init_path), tokenizer, test_pairs, reference,
                                     progress)
            if precision == "bf16":
                reference = ev
        except Exception as e:  # one precision failing (e.g. out of memory) must not stop the others
            free_memory()
            rec = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500],
                   "traceback": traceback.format_exc()[-2000:]}
        precisions[precision] = rec
    result = {"config_hash": config_hash, "precisions": precisions,
              "manifest": manifest(profile, "rm", data_source=data_source_of(paths),
                                   timings={"stage_seconds": time.perf_counter() - t0} | {
                                       p: r.get("train_seconds") for p, r in precisions.items()},
                                   peak_memory={p: r.get("peak_memory_bytes") for p, r in precisions.items()})}
    atomic_write_json(result_path, result)
    return result | {"reused": False}
