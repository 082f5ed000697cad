"""PPO of the SFT policy against each reward-model precision with TRL's experimental PPOTrainer (trl 1.12.0).

Policy: the SFT model with a fresh LoRA adapter (reference = the same model with the adapter disabled).
Value model: the bf16 reward model merged, trained through a fresh LoRA plus its head.
Reward model: the chosen precision's model, resident on CPU behind `CPURewardModel`, scored in eval() mode.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .config import Paths, Profile, resolve_device
from .data import data_files, read_pairs
from .results import MemoryMeter
from .runtime import bf16_ok, drop_scratch, free_memory, lora_config, trainer_kwargs


class PPOError(RuntimeError):
    """A PPO run that cannot start; the message says what is missing."""


# ------------------------------------------------------------------------------------- reward on the CPU
class _Backbone(nn.Module):
    """What TRL calls as `getattr(rm, rm.base_model_prefix)`: runs the RM's transformer on the RM's device."""

    def __init__(self, owner):
        super().__init__()
        object.__setattr__(self, "owner", owner)  # not a submodule: .to()/.train() must not reach the RM

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        owner = self.owner
        owner.caller_device = input_ids.device
        t0 = time.perf_counter()
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        inputs = {k: v.to(owner.device) for k, v in inputs.items() if v is not None}
        with torch.no_grad():
            out = owner.lm_backbone(**inputs, output_hidden_states=True, return_dict=True, use_cache=False)
        owner.seconds += time.perf_counter() - t0
        return out  # hidden states stay on the RM's device: the head runs there too


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
    in eval() mode (bitsandbytes int8 on CPU takes its int8 path only there). `seconds` counts scoring time.
    """

    base_model_prefix = "backbone"

    def __init__(self, reward_model, device: str = "cpu"):
        super().__init__()
        inner = reward_model.get_base_model() if hasattr(reward_model, "get_base_model") else reward_model
        # Plain attributes, not submodules, so nothing the trainer does to this wrapper reaches the RM.
        object.__setattr__(self, "reward_model", reward_model)
        object.__setattr__(self, "lm_backbone", getattr(inner, inner.base_model_prefix))
        object.__setattr__(self, "head", inner.score)
        self.device = torch.device(device)
        self.caller_device = self.device
        self.seconds = 0.0
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


# ----------------------------------------------------------------------------------------- models
def policy_dir(paths: Paths, precision: str, seed: int) -> Path:
    return paths.models / f"ppo_policy_{precision}" / f"seed{seed}"


def load_value_model(profile: Profile, paths: Paths, *, device: str, dtype):
    """The bf16 reward model, merged into a plain model at the policy's dtype: PPO trains it through a fresh LoRA
    (given to it here) plus its head, which is what keeps the critic within an 8 GB card."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from .reward import PRECISION_FILE, SCORE_HEAD, rm_dir

    bf16_dir = rm_dir(paths, "bf16")
    if not (bf16_dir / PRECISION_FILE).exists():
        raise PPOError(f"no bf16 reward model in {bf16_dir}: the value model starts from it; run 03 with bf16")
    from .sft import sft_dirs

    base = AutoModelForSequenceClassification.from_pretrained(
        sft_dirs(paths)["merged"], num_labels=1, dtype=dtype, trust_remote_code=profile.base.trust_remote_code)
    base.config.pad_token_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    merged = PeftModel.from_pretrained(base, str(bf16_dir)).merge_and_unload()
    merged.to(device)
    p = profile.ppo
    lora = lora_config(merged, r=p.lora_r, alpha=p.lora_alpha, dropout=0.0, target_modules=p.target_modules,
                       task_type="SEQ_CLS", modules_to_save=[SCORE_HEAD])
    return get_peft_model(merged, lora)


def _prompt_dataset(pairs, tokenizer):
    from datasets import Dataset

    prompts = sorted({p.prompt for p in pairs})  # one row per distinct prompt
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return Dataset.from_dict({"input_ids": ids})


class _History:
    """Collects TRL's per-update metrics into the run's JSON (no external tracker)."""

    KEYS = {"reward": "objective/scores", "kl": "objective/kl", "entropy": "objective/entropy",
            "rlhf_reward": "objective/rlhf_reward", "policy_loss": "loss/policy_avg", "value_loss": "loss/value_avg",
            "clipfrac": "policy/clipfrac_avg", "approxkl": "policy/approxkl_avg"}

    def __init__(self):
        from transformers import TrainerCallback

        history = self.rows = []
        t0 = [time.perf_counter()]

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                t0[0] = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "objective/scores" in logs:
                    row = {"step": state.global_step, "seconds": time.perf_counter() - t0[0]}
                    row.update({k: float(logs[v]) for k, v in _History.KEYS.items() if v in logs})
                    history.append(row)

        self.callback = Callback()


def build_ppo_trainer(prefs_path, *, sft_path, rm_path, out_dir, profile: Profile, paths: Paths, ppo_batch: int,
                      ppo_epochs: int, max_new: int, ppo_lr: float, clip: float, kl_coef: float, mini_batch: int,
                      steps: int = 10, temperature: float = 1.0, seed: int = 0, progress: bool = True, callbacks=()):
    """TRL's PPOTrainer with our policy, value model and CPU-resident reward model. Returns (trainer, reward
    wrapper, tokenizer, reward-model info)."""
    from transformers import AutoModelForCausalLM, set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from .base_model import load_tokenizer
    from .reward import load_reward_model

    set_seed(seed)  # the fresh LoRA adapters are initialised before TRL seeds anything
    device = resolve_device(profile)
    dtype = torch.bfloat16 if bf16_ok(device) else torch.float32
    tokenizer = load_tokenizer(profile, paths, path=sft_path)
    tokenizer.padding_side = "left"  # queries are left-padded so generation continues right after the prompt
    policy = AutoModelForCausalLM.from_pretrained(sft_path, dtype=dtype,
                                                  trust_remote_code=profile.base.trust_remote_code).to(device)
    p = profile.ppo
    peft_config = lora_config(policy, r=p.lora_r, alpha=p.lora_alpha, dropout=0.0, target_modules=p.target_modules,
                              task_type="CAUSAL_LM")
    value = load_value_model(profile, paths, device=device, dtype=dtype)
    rm, rm_info = load_reward_model(rm_path, profile=profile, device="cpu")
    reward = CPURewardModel(rm, "cpu")
    dataset = _prompt_dataset(read_pairs(prefs_path), tokenizer)
    args = PPOConfig(
        **trainer_kwargs(profile, out_dir=out_dir, seed=seed, progress=progress, steps=20),
        # TRL couples these: rollouts per update = per-device batch x accumulation steps, and with one mini-batch
        # accelerate's gradient sync lines up with the optimizer step (one step per PPO epoch).
        per_device_train_batch_size=mini_batch, gradient_accumulation_steps=ppo_batch // mini_batch,
        num_mini_batches=1, local_rollout_forward_batch_size=mini_batch,
        learning_rate=ppo_lr, num_ppo_epochs=ppo_epochs, response_length=max_new, cliprange=clip, kl_coef=kl_coef,
        total_episodes=steps * ppo_batch, temperature=temperature, stop_token="eos", num_sample_generations=0,
        per_device_eval_batch_size=1)
    args.logging_steps = 1
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
                         value_model=value, train_dataset=dataset, eval_dataset=dataset.select(range(1)),
                         peft_config=peft_config, callbacks=list(callbacks))
    return trainer, reward, tokenizer, rm_info


def train_ppo(prefs_path, *, out_dir, progress: bool = True, **kwargs) -> dict:
    """One PPO run (keywords as `build_ppo_trainer`); saves the policy adapter to `out_dir`.

    Returns the per-step history, seconds, peak memory, reward-scoring seconds, and the trained policy (PeftModel,
    for evaluation before it is released) under "policy".
    """
    history = _History()
    trainer, reward, tokenizer, rm_info = build_ppo_trainer(prefs_path, out_dir=out_dir, progress=progress,
                                                            callbacks=[history.callback], **kwargs)
    with MemoryMeter() as meter:
        trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model).policy
    trained.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    drop_scratch(out_dir)
    result = {"history": history.rows, "train_seconds": meter.result["seconds"], "peak_memory": meter.result,
              "reward_scoring_seconds": reward.seconds, "reward_device": str(reward.device),
              "policy_device": str(trainer.accelerator.device), "rm_precision": rm_info["precision"],
              "policy": trained, "tokenizer": tokenizer}
    del trainer, reward
    free_memory()
    return result


def ppo_kwargs(profile: Profile, paths: Paths, precision: str, seed: int) -> dict:
    """The profile's settings as `train_ppo` / `build_ppo_trainer` keywords, for one (precision, seed)."""
    from .reward import rm_dir
    from .sft import sft_dirs

    sft_path = sft_dirs(paths)["merged"]
    if not (sft_path / "config.json").exists():
        raise PPOError(f"no SFT model in {sft_path}: run 02_SFT_Finetuning first")
    p = profile.ppo
    return dict(sft_path=str(sft_path), rm_path=rm_dir(paths, precision), out_dir=policy_dir(paths, precision, seed),
                profile=profile, paths=paths, ppo_batch=p.ppo_batch, ppo_epochs=p.ppo_epochs, max_new=p.max_new,
                ppo_lr=p.ppo_lr, clip=p.clip, kl_coef=p.kl_coef, mini_batch=p.mini_batch, steps=p.steps,
                temperature=p.temperature, seed=seed)


def run_one(profile: Profile, paths: Paths, precision: str, seed: int, *, progress: bool = True) -> dict:
    """One (precision, seed) PPO run with the profile's settings."""
    return train_ppo(data_files(paths)["train"], progress=progress, **ppo_kwargs(profile, paths, precision, seed))


def run_ppo_experiments(profile: Profile, paths: Paths, *, force: bool = False, progress: bool = True) -> dict:
    """The 04 notebook's stage: one PPO run per RM precision and seed, evaluation, ppo_experiment_results.json."""
    from .evaluate import run_experiments

    return run_experiments(profile, paths, force=force, progress=progress)


def eval_prompts(profile: Profile, paths: Paths) -> list[str]:
    pairs = read_pairs(data_files(paths)["test"])
    return sorted({p.prompt for p in pairs})[: profile.ppo.eval_prompts]

