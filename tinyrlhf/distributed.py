"""Several processes under `accelerate launch` (torchrun underneath): the command-line stages train on every rank
through the trainers' own accelerate integration, and everything else is the main process's.

- Every rank runs the same stage code in the same order, so collectives (DDP's gradient all-reduce, the barrier
  in results.atomic_folder) meet. Training runs on every rank; evaluation, result files and the workdir lock are
  the main process's, and a model folder is written once (results.atomic_folder: the other ranks write into a
  private folder that is then removed, and all ranks wait until the main process has renamed its folder in).
- The profile's batch sizes are global: each rank takes its share (per_rank), so 1 and N processes train on the
  same batches of the same shuffled order (transformers' seedable sampler gives rank r the per-device batches
  r, r+N, ...; TRL's PPO samples a global order and shards it).
- Every rank seeds with the profile's seed (transformers' set_seed); TRL's PPO then reseeds each rank with
  seed + 100003 x rank for its sampling, so the ranks' rollouts differ.
- RankRecord: what each rank trained (rows through its model, a checksum of its trained weights), gathered to the
  main process and written into the results, the evidence that every rank trained in step.

Without a launcher (WORLD_SIZE unset or 1) every function here is the single-process behaviour.
"""

from __future__ import annotations

import datetime
import os

# Evaluation on the main process (CPU reward scoring of every reply at the real size) can keep the other ranks
# waiting in a collective far longer than torch's 30-minute default before it calls the process group dead.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=12)
ACCELERATE_VARIABLES = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED",
                        "ACCELERATE_DYNAMO_BACKEND", "OMP_NUM_THREADS")


class DistributedError(RuntimeError):
    """A setting that cannot be split across the processes; the message says what to change."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> None:
    """Join the process group before any model is built. On a CPU host accelerate forms it only when asked with
    cpu=True (a plain PartialState() reports world size 1 on every rank); on GPUs each rank takes its own card,
    so that "cuda" below means that rank's card."""
    if not launched():
        return
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu", timeout=COLLECTIVE_TIMEOUT)
    if state.num_processes != world_size():
        raise DistributedError(f"accelerate formed a group of {state.num_processes} processes, the launcher started "
                               f"{world_size()}: launch with `accelerate launch --multi_gpu --num_processes "
                               f"{world_size()}` or torchrun (docs/scale-out.md)")
    if device == "cuda":
        import torch

        torch.cuda.set_device(state.local_process_index)


def barrier() -> None:
    if launched():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not launched():
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def per_rank(global_size: int, setting: str) -> int:
    """This rank's share of a global batch size; a clear error when it does not split evenly."""
    n = world_size()
    if global_size % n:
        raise DistributedError(f"{setting} ({global_size}) must be a multiple of the number of processes ({n}): "
                               f"the profile's batch sizes are global, split evenly across the processes")
    return global_size // n


def check_batches(profile, stages=("sft", "rm", "ppo")) -> None:
    """Every global batch the named stages train with splits evenly over the processes (before anything loads)."""
    batches = {"sft": [("base.pretrain_batch", profile.base.pretrain_batch), ("sft.batch_size", profile.sft.batch_size)],
               "rm": [("rm.batch_size", profile.rm.batch_size)],
               "ppo": [("ppo.ppo_batch", profile.ppo.ppo_batch), ("ppo.mini_batch", profile.ppo.mini_batch)]}
    for stage in stages:
        for setting, size in batches.get(stage, []):
            per_rank(size, setting)
    if "ppo" in stages:
        micro_batch(profile.ppo.mini_batch, profile.ppo.micro_batch)


def micro_batch(mini_batch: int, micro: int) -> int:
    """PPO's sequences per forward/backward pass in this process: ppo.micro_batch, capped at this process's share
    of a mini-batch (the accumulation changes, not the update); a clear error when it does not divide that share."""
    share = per_rank(mini_batch, "ppo.mini_batch")
    if share % min(micro, share):
        raise DistributedError(f"ppo.mini_batch / processes ({mini_batch} / {world_size()} = {share}) must be a "
                               f"multiple of ppo.micro_batch ({micro}): choose a ppo.micro_batch that divides it")
    return min(micro, share)


def engine() -> str:
    """The launcher's engine: "fsdp", "deepspeed" or "ddp" (or "none" without a launcher)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "deepspeed"
    return "ddp" if launched() else "none"


def check_launch(stages, profile) -> None:
    """Refuse, before anything loads, what TRL 1.12 and bitsandbytes cannot do under the launcher's engine."""
    used = engine()
    if used in ("fsdp", "deepspeed") and "ppo" in stages:
        raise DistributedError(f"the ppo stage cannot run under {used}: TRL 1.12's PPOTrainer "
                               + ("hands the reward model to deepspeed.initialize, which would move the CPU reward "
                                  "model onto the card" if used == "deepspeed" else
                                  "has no FSDP path for its reference and reward models or for generation")
                               + "; run `tinyrlhf run ppo` under configs/accelerate/ddp.yaml")
    quantized = [p for p in profile.rm.precisions if p != "bf16"]
    if used == "fsdp" and "rm" in stages and quantized:
        raise DistributedError(f"reward models at {', '.join(quantized)} cannot train under FSDP (bitsandbytes "
                               "weights do not shard here); set rm.precisions=[\"bf16\"] or use ddp.yaml")


def describe() -> dict:
    """For the manifest: the world size and the launcher's accelerate settings."""
    return {"world_size": world_size(), "rank": rank(), "engine": engine(),
            "launcher": "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else ("none" if not launched() else "other"),
            "accelerate": {k: os.environ[k] for k in ACCELERATE_VARIABLES if k in os.environ}}


def rank_record():
    """A TrainerCallback that records what this rank trained (`ranks` after training: one dict per rank, gathered
    on every rank): rows through the model's forward, the first batch's token checksum (ranks see different data),
    and a checksum of the trained weights after training (ranks that trained in step agree)."""
    import torch
    from transformers import TrainerCallback

    class RankRecord(TrainerCallback):
        def __init__(self):
            self.rows, self.first_batch, self.ranks, self._hook = 0, None, [], None

        def on_train_begin(self, args, state, control, model=None, **kw):
            def count(_module, args_, kwargs):
                ids = kwargs.get("input_ids", args_[0] if args_ else None)
                if torch.is_tensor(ids) and torch.is_grad_enabled():  # training passes, not rollouts or evaluation
                    self.rows += ids.shape[0]
                    if self.first_batch is None:
                        self.first_batch = int(ids.long().sum())

            self._hook = model.register_forward_pre_hook(count, with_kwargs=True)

        def on_train_end(self, args, state, control, model=None, **kw):
            self._hook.remove()
            trained = [p.detach().double() for p in model.parameters() if p.requires_grad]
            checksum = float(sum(p.sum() for p in trained)) if trained else 0.0
            self.ranks = gather({"rank": rank(), "training_rows": self.rows, "first_batch_token_sum": self.first_batch,
                                 "optimizer_steps": state.global_step, "trained_weights_checksum": checksum})

    return RankRecord()
