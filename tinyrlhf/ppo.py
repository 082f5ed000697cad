"""PPO of the SFT policy against a reward model with TRL's experimental PPOTrainer (trl 1.12.0). A library: the
experiment over precisions and seeds is the ppo stage in stages.py.

Policy: the SFT model with a fresh LoRA adapter (reference = the same model with the adapter disabled).
Value model: the bf16 reward model merged, trained through a fresh LoRA plus its head.
Reward model: the chosen precision's model, resident on CPU behind `CPURewardModel`, scored in eval() mode.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .base_model import load_tokenizer
from .config import Profile, resolve_device
from .data import read_pairs
from .results import MemoryMeter
from .reward import PRECISION_FILE, SCORE_HEAD, load_reward_model
from .runtime import bf16_ok, drop_scratch, free_memory, lora_config, seed_everything, trainer_kwargs


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
def load_value_model(sft_path, value_rm_path, *, lora_r: int, lora_alpha: int, target_modules, device: str, dtype,
                     trust_remote_code: bool = False):
    """The bf16 reward model at `value_rm_path`, merged into a plain model at the policy's dtype: PPO trains it
    through a fresh LoRA (given to it here) plus its head, which is what keeps the critic within an 8 GB card."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification

    if not (Path(value_rm_path) / PRECISION_FILE).exists():
        raise PPOError(f"no bf16 reward model in {value_rm_path}: the value model starts from it; run 03 with bf16")
    base = AutoModelForSequenceClassification.from_pretrained(sft_path, num_labels=1, dtype=dtype,
                                                              trust_remote_code=trust_remote_code)
    base.config.pad_token_id = base.config.pad_token_id if base.config.pad_token_id is not None else 0
    merged = PeftModel.from_pretrained(base, str(value_rm_path)).merge_and_unload()
    merged.to(device)
    lora = lora_config(merged, r=lora_r, alpha=lora_alpha, dropout=0.0, target_modules=target_modules,
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


def build_ppo_trainer(prefs_path, *, sft_path, rm_path, value_rm_path, out_dir, profile: Profile, ppo_batch: int,
                      ppo_epochs: int, max_new: int, ppo_lr: float, clip: float, kl_coef: float, mini_batch: int,
                      steps: int = 10, temperature: float = 1.0, lora_r: int = 16, lora_alpha: int = 32,
                      target_modules=("c_attn",), seed: int = 0, progress: bool = True, callbacks=()):
    """TRL's PPOTrainer with our policy, value model and CPU-resident reward model. Returns (trainer, reward
    wrapper, tokenizer, reward-model info)."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    seed_everything(seed)
    device = resolve_device(profile)
    dtype = torch.bfloat16 if bf16_ok(device) else torch.float32
    trust = profile.base.trust_remote_code
    tokenizer = load_tokenizer(sft_path, trust_remote_code=trust)
    tokenizer.padding_side = "left"  # queries are left-padded so generation continues right after the prompt
    policy = AutoModelForCausalLM.from_pretrained(sft_path, dtype=dtype, trust_remote_code=trust).to(device)
    peft_config = lora_config(policy, r=lora_r, alpha=lora_alpha, dropout=0.0, target_modules=target_modules,
                              task_type="CAUSAL_LM")
    value = load_value_model(sft_path, value_rm_path, lora_r=lora_r, lora_alpha=lora_alpha,
                             target_modules=target_modules, device=device, dtype=dtype, trust_remote_code=trust)
    rm, rm_info = load_reward_model(rm_path, trust_remote_code=trust, device="cpu")
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
