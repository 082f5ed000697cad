"""PPO of the SFT policy against a reward model with TRL's experimental PPOTrainer (trl 1.12.0). A library: the
experiment over arms and seeds is the ppo stage in stages.py.

Policy: the SFT model with a fresh LoRA adapter (reference = the same model with the adapter disabled).
Value model: the SFT model with a fresh score head and its own LoRA, the same start for every arm, so the only
thing that differs between arms is the reward they train against.
Reward model: the arm's model, resident on CPU behind `reward.CPURewardModel`, scored in eval() mode.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import io
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import torch

from .base_model import load_tokenizer
from .config import Profile, resolve_device
from .data import read_pairs
from .distributed import micro_batch as per_process_micro_batch
from .distributed import per_rank, rank_record
from .jobs import reward_threads
from .logits import contiguous_output_input, response_logprobs
from .results import MemoryMeter
from .reward import (
    SCORE_HEAD,
    CPURewardModel,
    _keep_head_fp32,
    keep_trainable_fp32,
    load_reward_model,
)
from .runtime import (
    drop_scratch,
    free_memory,
    lora_config,
    quiet_trainer,
    seed_everything,
    train_dtype,
    trainer_kwargs,
)

log = logging.getLogger(__name__)


class PPOError(RuntimeError):
    """A PPO run that cannot start; the message says what is missing."""


# ----------------------------------------------------------------------------------------- models
def load_value_model(sft_path, *, lora_r: int, lora_alpha: int, target_modules, device: str, dtype,
                     pad_token_id: int, trust_remote_code: bool = False):
    """The SFT model as a 1-output sequence classifier with a fresh score head; PPO trains it through its own LoRA
    plus the head, which keeps the critic within an 8 GB card."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(sft_path, num_labels=1, dtype=dtype,
                                                              trust_remote_code=trust_remote_code)
    base.config.pad_token_id = pad_token_id
    base.to(device)
    # The head in float32, computing in float32: PEFT upcasts LoRA layers but not a `modules_to_save` head, which
    # loaded in bf16 would lose Adam's steps (~1e-5) below half of bf16's spacing at its weights' scale (~0.016).
    _keep_head_fp32(base)
    lora = lora_config(base, r=lora_r, alpha=lora_alpha, dropout=0.0, target_modules=target_modules,
                       task_type="SEQ_CLS", modules_to_save=[SCORE_HEAD])
    value = get_peft_model(base, lora)
    keep_trainable_fp32(value)
    return value


def _prompt_dataset(pairs, tokenizer):
    from datasets import Dataset

    prompts = sorted({p.prompt for p in pairs})  # one row per distinct prompt
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return Dataset.from_dict({"input_ids": ids})


def _callbacks(history: list, checkpoints: list, eval_steps, on_checkpoint, on_update):
    """TRL's per-update metrics into `history`; `on_checkpoint(policy, step, reward)` results into `checkpoints` at
    `eval_steps`; `on_update(step, total)` after every update (progress)."""
    from transformers import TrainerCallback

    keys = {"reward": "objective/scores", "kl": "objective/kl", "entropy": "objective/entropy",
            "rlhf_reward": "objective/rlhf_reward", "policy_loss": "loss/policy_avg", "value_loss": "loss/value_avg",
            "clipfrac": "policy/clipfrac_avg", "approxkl": "policy/approxkl_avg", "eos_tokens": "val/num_eos_tokens"}
    t0 = [time.perf_counter()]

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            t0[0] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                row = {"step": state.global_step, "seconds": time.perf_counter() - t0[0]}
                history.append(row | {k: float(logs[v]) for k, v in keys.items() if v in logs})

        reward = None  # set by train_ppo once the trainer (and its reward wrapper) exists

        def on_step_end(self, args, state, control, model=None, **kw):
            if on_checkpoint is not None and state.global_step in eval_steps:
                record = on_checkpoint(model.policy, state.global_step, self.reward)
                checkpoints.append({"step": state.global_step} | record)
                model.train()  # TRL sets train mode once, before the first update
            if on_update is not None:
                on_update(state.global_step, state.max_steps)

    return Record()


def build_ppo_trainer(prefs_path, *, sft_path, rm_path, out_dir, profile: Profile, ppo_batch: int, ppo_epochs: int,
                      max_new: int, ppo_lr: float, clip: float, kl_coef: float, mini_batch: int, micro_batch: int,
                      lr_scheduler: str = "linear",
                      rollout_chunk: int, missing_eos_penalty: float | None = None, steps: int = 10,
                      temperature: float = 1.0, lora_r: int = 16, lora_alpha: int = 32, target_modules=("q_proj",),
                      seed: int = 0, callbacks=(), dtype=None):
    """TRL's PPOTrainer with our policy, value model and CPU-resident reward model. Returns (trainer, reward
    wrapper, tokenizer, reward-model info). `dtype`: the policy's and value model's weights (default:
    runtime.train_dtype, from base.train_dtype)."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    seed_everything(seed)
    device = resolve_device(profile)
    dtype = dtype or train_dtype(profile, device)
    trust = profile.base.trust_remote_code
    tokenizer = load_tokenizer(sft_path, trust_remote_code=trust)
    tokenizer.padding_side = "left"  # queries are left-padded so generation continues right after the prompt
    policy = AutoModelForCausalLM.from_pretrained(sft_path, dtype=dtype, trust_remote_code=trust).to(device)
    peft_config = lora_config(policy, r=lora_r, alpha=lora_alpha, dropout=0.0, target_modules=target_modules,
                              task_type="CAUSAL_LM")
    value = load_value_model(sft_path, lora_r=lora_r, lora_alpha=lora_alpha, target_modules=target_modules,
                             device=device, dtype=dtype, pad_token_id=tokenizer.pad_token_id, trust_remote_code=trust)
    rm_device = profile.ppo.rm_device
    if rm_device == "cuda" and device != "cuda":
        raise PPOError("ppo.rm_device='cuda' but no CUDA device is visible: set ppo.rm_device='cpu'")
    rm, rm_info = load_reward_model(rm_path, trust_remote_code=trust, device=rm_device,
                                    int8_cpu_matmul=profile.rm.int8_cpu_matmul, cpu_kernel=profile.rm.cpu_kernel,
                                    cpu_dtype=profile.rm.cpu_dtype)
    threads = reward_threads(profile.ppo.rm_threads, rm_device, device, psutil.cpu_count(logical=False))
    reward = CPURewardModel(rm, rm_device, threads=threads)
    dataset = _prompt_dataset(read_pairs(prefs_path), tokenizer)
    micro_batch = per_process_micro_batch(mini_batch, micro_batch)
    args = PPOConfig(
        **trainer_kwargs(profile, out_dir=out_dir, seed=seed, steps=20),
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=per_rank(ppo_batch, "ppo.ppo_batch") // micro_batch,
        num_mini_batches=ppo_batch // mini_batch, local_rollout_forward_batch_size=rollout_chunk,
        learning_rate=ppo_lr, lr_scheduler_type=lr_scheduler, num_ppo_epochs=ppo_epochs, response_length=max_new, cliprange=clip, kl_coef=kl_coef,
        missing_eos_penalty=missing_eos_penalty, total_episodes=steps * ppo_batch, temperature=temperature,
        stop_token="eos", num_sample_generations=0, per_device_eval_batch_size=1)
    args.logging_steps = 1
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
                         value_model=value, train_dataset=dataset, eval_dataset=dataset.select(range(1)),
                         peft_config=peft_config, callbacks=list(callbacks))
    quiet_trainer(trainer)
    reach_policy_through_ddp(trainer)
    accumulate_per_mini_batch(trainer, per_rank(mini_batch, "ppo.mini_batch") // micro_batch)
    if args.activation_checkpointing:
        checkpoint_policy_and_value(trainer)
    return trainer, reward, tokenizer, rm_info


def checkpoint_policy_and_value(trainer) -> None:
    """Gradient checkpointing for PPO's training passes. TRL 1.12's PPOConfig defaults it on, but PPOTrainer runs
    its own loop and never enables it, so the policy and value model kept every layer's activations: at the rtx4060
    settings 15.4 GiB estimated instead of 5.7 (tinyrlhf.memory). Non-reentrant, as TRL sets it elsewhere. TRL
    samples rollouts in train mode, where a checkpointed layer drops the KV cache; the rollout patch therefore
    generates in eval mode (TRL has disabled dropout in both models, so the numbers are the same)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    for module in (model.policy, model.value_model):
        module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def reach_policy_through_ddp(trainer) -> None:
    """Under DDP (several processes), TRL 1.12's PPO rollout reads `model.policy` on the DistributedDataParallel
    wrapper, which does not pass attributes through (AttributeError; the trl#2375 family; DeepSpeed's and FSDP's
    wrappers do). Expose the wrapped policy and value model on the wrapper, outside its module registry, so DDP's
    parameters and gradient buckets are unchanged."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(trainer.model, DistributedDataParallel):
        inner = trainer.model.module
        trainer.model.__dict__.update(policy=inner.policy, value_model=inner.value_model)


def accumulate_per_mini_batch(trainer, micro_batches: int) -> None:
    """Make TRL 1.12 take one optimizer step per mini-batch.

    TRL 1.12 sets rollouts per update = per_device_train_batch_size x gradient_accumulation_steps, splits them into
    num_mini_batches, and walks each mini-batch in micro-batches of per_device_train_batch_size, but its
    Accelerator accumulates gradient_accumulation_steps micro-batches: with several mini-batches it then steps the
    optimizer once per several mini-batches and its stats have empty slots (fixed upstream never: PPO left TRL
    after 1.12). Here the accumulation is set to the micro-batches of one mini-batch, after the batch sizes were
    derived, so rollouts per update, mini-batches and micro-batches are all as configured.
    """
    trainer.accelerator.gradient_accumulation_steps = micro_batches
    trainer.args.gradient_accumulation_steps = micro_batches  # the shape of TRL's per-update stats


# ------------------------------------------------------------------------- rollout memory: a patch of TRL 1.12
class RolloutLogProbs:
    """Per-token log-probs of a rollout batch standing in for TRL's full-vocabulary logits: sliced like the logits
    tensor, and turned back into those log-probs by the patched selective_log_softmax."""

    def __init__(self, logprobs: torch.Tensor, response: torch.Tensor):
        self.logprobs, self.response = logprobs, response

    def __getitem__(self, rows):
        return RolloutLogProbs(self.logprobs[rows], self.response[rows])


class OverlappedScoring:
    """The reward model scoring each rollout chunk on its own thread as soon as the chunk is generated, while the
    card generates the next chunk and runs the reference and value passes (TRL 1.12 scores every chunk only after
    the whole rollout batch is generated, and the card waits for the CPU).

    `submit` starts a chunk's scoring with exactly what TRL's loop will later ask for (the reply cut after its first
    stop token, appended to its query; trl's get_reward); `take` hands TRL's get_reward call the finished scores
    when the rows asked for are that chunk's (TRL pads the whole batch wider: the extra columns must be padding).
    Anything else is scored as TRL would (a miss, counted). The scoring uses no random numbers, so generation
    samples the same tokens either way."""

    def __init__(self, reward, pad_token_id: int, stop_token_id: int | None):
        self.reward, self.pad_token_id, self.stop_token_id = reward, pad_token_id, stop_token_id
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-scoring")
        self.pending: collections.deque = collections.deque()
        self.hits = self.misses = 0

    def submit(self, query_response: torch.Tensor, context_length: int) -> None:
        from trl.experimental.ppo.ppo_trainer import truncate_response
        from trl.experimental.utils import get_reward  # TRL's own, not the patched name in ppo_trainer

        response = query_response[:, context_length:]
        if self.stop_token_id is not None:
            response = truncate_response(self.stop_token_id, self.pad_token_id, response)
        # on the CPU before the thread sees them: no CUDA work from the scoring thread, queued behind generation
        rows = torch.cat((query_response[:, :context_length], response), 1).cpu()
        self.pending.append((rows, self.executor.submit(get_reward, self.reward, rows, self.pad_token_id,
                                                        context_length)))

    def take(self, model, query_responses: torch.Tensor):
        """The finished get_reward result for these rows, or None (not the reward model, or not the next chunk)."""
        if model is not self.reward:
            return None
        asked = query_responses.cpu()
        for i, (rows, future) in enumerate(self.pending):
            width = rows.shape[1]
            if (asked.shape[0] == rows.shape[0] and asked.shape[1] >= width and torch.equal(asked[:, :width], rows)
                    and bool((asked[:, width:] == self.pad_token_id).all())):
                for _ in range(i):  # chunks TRL never asked for (none in TRL 1.12's loop): dropped, counted
                    self.pending.popleft()[1].cancel()
                    self.misses += 1
                self.pending.popleft()
                self.hits += 1
                _, scores, lengths = future.result()
                return None, scores.to(query_responses.device), lengths.to(query_responses.device)
        self.misses += 1
        log.warning("reward scoring: TRL asked for rows no overlapped chunk holds; scored them as TRL would")
        return None

    def close(self) -> None:
        for _, future in self.pending:  # a run that failed mid-rollout: finish (or fail) quietly
            future.cancel()
        self.pending.clear()
        self.executor.shutdown(wait=True)

    def record(self) -> dict:
        return {"overlapped": True, "chunks": self.hits, "misses": self.misses}


@contextlib.contextmanager
def rollout_logprobs_per_chunk(scoring: OverlappedScoring | None = None):
    """Two narrow patches of TRL 1.12's PPO (which left TRL after 1.12, so they will not be fixed upstream):

    Memory. TRL's rollout (`batch_generation`) keeps the float32 generation scores of the whole rollout batch,
    rollouts x response length x vocabulary (64 x 128 x 151,936 x 4 bytes = 5 GB for Qwen2.5 at the rtx4060
    settings), and pads them into a second copy, only to take one log-prob per generated token from them later.
    Here each chunk is generated without scores and its log-probs are taken at once from logits made at its
    response positions only (logits.response_logprobs).

    One dtype. TRL takes the rollout's log-probs from the generation scores (an incremental decode, upcast to
    float32) but the reference's and the training pass's from a full forward's logits in the model's dtype: with a
    bf16 policy the ratio is not 1 and the KL not 0 before any update. Here the rollout's log-probs come from the
    same full forward as the training pass's (TRL's `forward` conventions, the policy in eval mode as TRL trains it:
    dropout off), and every log-softmax runs in float32 (`selective_log_softmax` upcasts its logits). In float32
    the numbers are TRL's to float rounding (tests/test_rollout_patch.py).

    With `scoring` (OverlappedScoring), each generated chunk also goes to the reward model at once, and TRL's
    get_reward takes those scores when it reaches the chunk."""
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    original_batch_generation, original_log_softmax = trl_ppo.batch_generation, trl_ppo.selective_log_softmax

    def batch_generation(model, queries, local_rollout_forward_batch_size, pad_token_id, generation_config):
        context_length = queries.shape[1]
        query_responses, logprobs = [], []
        was_training = model.training
        model.eval()  # keeps the KV cache under gradient checkpointing (see checkpoint_policy_and_value)
        for i in range(0, queries.shape[0], local_rollout_forward_batch_size):
            query_response = _generate(model, queries[i: i + local_rollout_forward_batch_size], pad_token_id,
                                       generation_config)
            if scoring is not None:
                scoring.submit(query_response, context_length)
            logprobs.append(response_logprobs(model, query_response, pad_token_id, context_length,
                                              temperature=generation_config.temperature))
            query_responses.append(query_response)
        model.train(was_training)
        padded = trl_ppo.pad(query_responses, padding_value=pad_token_id, padding_side="right")
        padded = padded.view(-1, padded.shape[-1])[: queries.shape[0]]
        # TRL pads the logits with zeros; the log-prob it then takes there is log_softmax(0)[pad] = -log(vocab).
        vocab = model.get_output_embeddings().weight.shape[0]
        lp = trl_ppo.pad(logprobs, padding_value=-math.log(vocab), padding_side="right")
        lp = lp.view(-1, lp.shape[-1])[: queries.shape[0]]
        return padded, RolloutLogProbs(lp, padded[:, context_length:])

    def selective_log_softmax(logits, index):
        if isinstance(logits, RolloutLogProbs):
            if logits.response.shape != index.shape or not torch.equal(logits.response, index):
                raise RuntimeError("rollout log-probs asked for another response than they were taken for")
            return logits.logprobs
        return original_log_softmax(logits.float(), index)  # a copy of this micro-batch's logits in float32

    trl_ppo.batch_generation, trl_ppo.selective_log_softmax = batch_generation, selective_log_softmax
    try:
        with scores_taken_from(scoring):
            yield
    finally:
        trl_ppo.batch_generation, trl_ppo.selective_log_softmax = original_batch_generation, original_log_softmax


@contextlib.contextmanager
def scores_taken_from(scoring: OverlappedScoring | None):
    """TRL's get_reward in its PPO loop, answered from `scoring` where it already scored the rows asked for."""
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    if scoring is None:
        yield
        return
    original_get_reward = trl_ppo.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        done = scoring.take(model, query_responses)
        return done if done is not None else original_get_reward(model, query_responses, pad_token_id, context_length)

    trl_ppo.get_reward = get_reward
    try:
        yield
    finally:
        trl_ppo.get_reward = original_get_reward
        scoring.close()


def _generate(model, queries, pad_token_id: int, generation_config) -> torch.Tensor:
    """trl.experimental.ppo.ppo_trainer.generate without `output_scores`: the same call and sampled tokens (scores
    do not touch the sampling), but no [chunk, response, vocabulary] float32 scores, which the patch does not use."""
    context_length = queries.shape[1]
    attention_mask = queries != pad_token_id
    with contiguous_output_input(model):  # a frozen bf16 output layer would be copied per row (see there)
        output = model.generate(input_ids=torch.masked_fill(queries, ~attention_mask, 0),
                                attention_mask=attention_mask, generation_config=generation_config,
                                return_dict_in_generate=True)
    return torch.cat((queries, output.sequences[:, context_length:]), dim=1)


@contextlib.contextmanager
def long_lived_objects_frozen():
    """TRL 1.12's PPO loop calls gc.collect() twice per update. With torch, transformers and TRL loaded a full
    collection walks every long-lived object (0.3 s each on the cpu profile: a tenth of a run, measured). Objects
    that exist before training are moved out of the collector's walks (gc.freeze) and back in afterwards, so they are
    still collected once they become garbage."""
    gc.collect()  # what is garbage now (e.g. a failed run's cycles) must not be frozen in with the rest
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def train_ppo(prefs_path, *, out_dir, eval_steps=(), on_checkpoint=None, on_update=None, **kwargs) -> dict:
    """One PPO run (keywords as `build_ppo_trainer`); saves the policy adapter to `out_dir`.

    `on_checkpoint(policy, step, reward) -> dict` runs after each update in `eval_steps` (evaluation along training;
    `reward` is the run's CPU reward wrapper, the proxy).
    Returns the per-update history, the checkpoint records, seconds, peak memory and reward-scoring seconds.
    """
    history, checkpoints = [], []
    callback = _callbacks(history, checkpoints, set(eval_steps), on_checkpoint, on_update)
    ranks = rank_record()
    trainer, reward, tokenizer, rm_info = build_ppo_trainer(prefs_path, out_dir=out_dir, callbacks=[ranks, callback],
                                                            **kwargs)
    callback.reward = reward
    p = kwargs["profile"].ppo
    overlap = p.overlap_scoring == "on" or (p.overlap_scoring == "auto" and trainer.accelerator.device.type == "cuda"
                                            and reward.device.type == "cpu")
    scoring = OverlappedScoring(reward, tokenizer.pad_token_id, trainer.stop_token_id) if overlap else None
    # TRL prints "===training policy===" to stdout on every run; keep it (and any other print) out of the notebook.
    with MemoryMeter() as meter, contextlib.redirect_stdout(io.StringIO()) as printed, rollout_logprobs_per_chunk(scoring), \
            long_lived_objects_frozen():
        trainer.train()
    log.debug("TRL printed: %s", printed.getvalue().strip())
    trained = trainer.accelerator.unwrap_model(trainer.model).policy
    trained.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    drop_scratch(out_dir)
    result = {"history": history, "checkpoints": checkpoints, "train_seconds": meter.result["seconds"],
              "peak_memory": meter.result, "reward_scoring_seconds": reward.seconds,
              "reward_device": str(reward.device), "policy_device": str(trainer.accelerator.device),
              "reward_threads": reward.threads or torch.get_num_threads(), "reward_scored_tokens": reward.tokens,
              "reward_int8_matmul": rm_info.get("int8_matmul"), "reward_kernel": rm_info.get("kernel"),
              "rm_precision": rm_info["precision"], "ranks": ranks.ranks,
              "reward_overlap": scoring.record() if scoring else {"overlapped": False}}
    del trainer, reward, trained
    free_memory()
    return result
