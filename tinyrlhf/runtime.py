"""What every training stage shares: seeding, device and dtype decisions, trainer arguments, LoRA settings and
freeing memory."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

from .config import ConfigError, Profile, resolve_device
from .cpu import native_bf16

SCRATCH = "checkpoints"  # the trainers' working folder inside a stage's output folder; removed when done


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Call it before building a model: a fresh score head and peft's LoRA
    weights are drawn when the model is built, before any Trainer seeds anything, so without this they would
    depend on whatever ran earlier in the process."""
    from transformers import set_seed

    set_seed(seed)


def train_dtype(profile: Profile, device: str):
    """The dtype the models are loaded in and train under (base.train_dtype). "auto": bf16 on CUDA cards that
    support it; float32 on the CPU (bf16 there is emulated and slow without AVX512-BF16/AMX, and the cpu profile's
    numbers must be reproducible). "bf16" on the CPU runs the card's dtypes there, to catch on CPU what only they
    would show (benchmarks/real_size_memory.py)."""
    import torch

    setting = profile.base.train_dtype
    if setting == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[setting]


def scratch_dir(out_dir) -> Path:
    return Path(out_dir) / SCRATCH


def drop_scratch(out_dir) -> None:
    """Remove a finished trainer's working folder (we save what we keep ourselves; save_strategy is "no")."""
    shutil.rmtree(scratch_dir(out_dir), ignore_errors=True)


def trainer_kwargs(profile: Profile, *, out_dir, seed: int, steps: int) -> dict:
    """TrainingArguments shared by the SFT, RM and PPO configs; `out_dir` is the stage's output folder. The
    trainers' own progress display is off: callers show one labelled bar per unit of work (progress_callback).
    Gradient checkpointing is one setting for every stage (`sft.gradient_checkpointing`, as the memory estimate
    assumes): TRL's configs default it to True, which on the cpu profile's tiny model only recomputes the forward
    (measured: an int4 reward model trained 1.5x slower with it)."""
    import torch

    device = resolve_device(profile)
    return dict(output_dir=str(scratch_dir(out_dir)), seed=seed, data_seed=seed, use_cpu=device == "cpu",
                bf16=train_dtype(profile, device) == torch.bfloat16,
                report_to=[] if profile.report_to == "none" else [profile.report_to],
                save_strategy="no", logging_steps=max(1, steps // 20), disable_tqdm=True, dataloader_num_workers=0,
                activation_checkpointing=profile.sft.gradient_checkpointing,  # transformers 5's name for it
                # Under DDP: every trained parameter (LoRA, score head) is used in every step; transformers would
                # otherwise search for unused ones each step, as a PeftModel is not a PreTrainedModel to it.
                ddp_find_unused_parameters=False)


def quiet_trainer(trainer):
    """Remove the PrinterCallback a Trainer adds when its bars are off: it prints every logged dict; the metrics
    stay in trainer.state.log_history (and reach report_to)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def loss_curve(trainer) -> list[dict]:
    return [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]


def free_memory() -> None:
    """Release what a finished stage held: Python garbage, the CUDA cache, and the C heap's free pages. glibc keeps
    freed blocks below its mmap threshold (a Qwen2.5-0.5B weight matrix, 17 MB in float32, is below it once large
    blocks were freed) in the process, so a reward model loaded after another started gigabytes higher (measured:
    an int4 model's training peak 1.44x the estimate after the int8 model's kernel check); malloc_trim returns
    them."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only
            libc.malloc_trim(0)
    except OSError:
        pass


def collected(ref) -> bool:
    """Free memory, then say whether the object behind the weak reference `ref` is gone: a model that is still
    alive after its last name was deleted is a leak that would pile up across precisions and seeds."""
    free_memory()
    return ref() is None


def lora_config(model, *, r: int, alpha: int, dropout: float, target_modules, task_type: str,
                modules_to_save=None):
    """The peft LoraConfig every stage uses: targets checked against `model`, and fan_in_fan_out set for GPT-2,
    which stores its projections as Conv1D (weights transposed)."""
    from peft import LoraConfig

    check_target_modules(model, target_modules)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2", task_type=task_type,
                      modules_to_save=modules_to_save)


def reward_cpu_bf16(cpu_dtype: str, native: bool) -> bool:
    """Whether reward models compute in bf16 on a CPU: where it runs bf16 natively (`native`) and rm.cpu_dtype is
    "auto"."""
    return native and cpu_dtype == "auto"


def reward_compute_dtype(device: str, cpu_dtype: str = "auto"):
    """The dtype of a `bf16` reward model's backbone: bf16 where the device runs it natively, else float32; on the
    CPU, float32 whatever the CPU when `cpu_dtype` (rm.cpu_dtype) is "fp32"."""
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if reward_cpu_bf16(cpu_dtype, native_bf16()) else torch.float32


def check_target_modules(model, names) -> None:
    """LoRA targets must exist in the model; say which names it has instead of peft's error from deep inside."""
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if not list(m.children())}
    missing = [n for n in names if n not in leaves]
    if missing:
        linear = sorted(n for n in leaves if any(k in n for k in ("proj", "attn", "fc", "dense", "query", "key",
                                                                       "value", "c_")))
        raise ConfigError(f"LoRA target modules {missing} are not in {model.config.model_type} "
                          f"({getattr(model.config, '_name_or_path', '')}); set *.target_modules to names it has, "
                          f"e.g. {linear}")


def progress_bar(label: str, enabled: bool = True):
    """report(done, total) for one labelled tqdm bar (a widget in a notebook, text in a terminal); None when
    progress is off."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, dynamic_ncols=True)
        bar.total, bar.n = total, done
        bar.refresh()
        if done >= total:
            bar.close()

    return report


def progress_callback(report):
    """A TrainerCallback that calls `report(step, max_steps)` after every optimizer step: the trainers' own bars
    are off (disable_tqdm) and the caller shows one labelled bar per unit of work instead."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            report(state.global_step, state.max_steps)

    return Progress()
