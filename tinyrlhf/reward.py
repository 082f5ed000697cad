"""Reward models at bf16, int8 (LLM.int8) and int4 (NF4), trained with TRL's RewardTrainer through LoRA, and what
quantization costs them: accuracy, agreement with bf16, footprint and CPU scoring throughput. A library: the stage
is in stages.py."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from .base_model import load_tokenizer
from .chat import completion
from .config import PRECISIONS, Profile, resolve_device
from .data import Pair, read_pairs
from .results import MemoryMeter, atomic_write_text
from .runtime import drop_scratch, lora_config, loss_curve, reward_compute_dtype, seed_everything, trainer_kwargs

# bitsandbytes logs on every int8 matmul that float32 inputs are cast to float16; it is expected, and one line
# per layer per step buries the notebook's output.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    lambda record: not record.getMessage().startswith("MatMul8bitLt: inputs will be cast"))

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


def _keep_head_fp32(model) -> None:
    """Score head in float32, fed float32: the reward is a difference of two head outputs."""
    import torch

    head = getattr(model, SCORE_HEAD)
    head.float()
    head.register_forward_pre_hook(lambda _m, args: tuple(a.float() if torch.is_tensor(a) else a for a in args))


def load_backbone(init_path: str, precision: str, *, pad_token_id: int, device: str, double_quant: bool = True,
                  trust_remote_code: bool = False):
    """A 1-output sequence-classification model from `init_path` at `precision`. Returns (model, dtype name)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    dtype = reward_compute_dtype(device)
    qconfig = quantization_config(precision, double_quant=double_quant, compute_dtype=dtype)
    kwargs = {"num_labels": 1, "trust_remote_code": trust_remote_code}
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
    from trl import RewardConfig, RewardTrainer

    seed_everything(seed)
    out_dir = Path(out_dir)
    device = resolve_device(profile)
    model, compute = load_backbone(init_path, precision, pad_token_id=tokenizer.pad_token_id, device=device,
                                   double_quant=double_quant, trust_remote_code=profile.base.trust_remote_code)
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


def load_reward_model(path, *, trust_remote_code: bool = False, device: str = "cpu"):
    """Reload a saved reward model at the precision it was trained at, in eval mode. Returns (model, info)."""
    from peft import PeftModel

    path = Path(path)
    info_path = path / PRECISION_FILE
    if not info_path.exists():
        raise RewardModelError(f"{path} holds no trained reward model: run 03_Reward_Modeling first")
    info = json.loads(info_path.read_text())
    tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    backbone, _ = load_backbone(info["init_path"], info["precision"], pad_token_id=tok.pad_token_id, device=device,
                                double_quant=info.get("double_quant", True), trust_remote_code=trust_remote_code)
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
