"""How long a profile takes on a GPU beside a CPU: predicted hours per stage from the work each stage does (tokens
trained, generated and scored), the card's published or measured speed, and the CPU reward-scoring throughput
measured by benchmarks/rm_scoring.py (docs/rm-scoring.json). A model with stated assumptions, not a measurement:
docs/time-budget.md says which figure comes from where, and 00_Setup prints it for the machine it runs on.

Work per stage (N: the base model's parameters; a forward pass costs 2N FLOPs per token):
- SFT: steps x batch x accumulation sequences; LoRA training costs 4N per token (forward, backward to the
  activations; the frozen weights get no gradient), 6N with gradient checkpointing (one more forward); then the
  held-out loss, greedy replies and the SFT policy's sampled replies (02's evaluation).
- Reward models: steps x batch x accumulation pairs = twice the sequences, 4N per token, per arm; then every test
  pair scored on the CPU (03 evaluates there).
- PPO, per run: per update, rollouts generated (decode steps of the rollout chunk, each bound by reading the
  weights or by a fixed per-step overhead), four forward passes over the padded rollouts (the policy's log-probs,
  ppo.rollout_logprobs_per_chunk; the reference; the value model twice as TRL runs it), ppo_epochs x (policy +
  value) training passes, and the reward model's CPU scoring of the real tokens.
- Evaluation (in 04): the replies of every run and of the SFT policy generated on the card and scored on the CPU
  by the judge (a reward model) and, for the cross matrix, by every arm's reward model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from .config import FIRST_DOWNLOAD, SCRATCH_MODEL, Profile, bon_sample_chunk, resolve_source
from .jobs import torch_threads
from .memory import EVAL_SAMPLE_ROWS, spec_for_profile
from .stats import projected_half_width

# RTX 4060 (AD107): NVIDIA's specifications give 3072 CUDA cores, a 2.46 GHz boost clock, 8 GB GDDR6 at 272 GB/s
# (https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4060-4060ti/). Dense BF16 tensor throughput
# with FP32 accumulation, what PyTorch's bf16 matmuls use: 24 SMs x 512 FLOPs/clock x 2.46 GHz = 30.2 TFLOPS
# (Ada's GeForce tensor cores run FP32 accumulation at half the FP16-accumulation rate; the same figure is listed
# by fpsbench.com and hmc-tech.com). FP32 on the CUDA cores: 3072 x 2 x 2.46 GHz = 15.1 TFLOPS.
RTX4060 = {"name": "NVIDIA GeForce RTX 4060", "bf16_tflops": 30.2, "bandwidth_gbs": 272.0, "memory_gb": 8.0}
# Assumptions, each stated in docs/time-budget.md and to be replaced by measurements on a card:
MFU = 0.35  # share of the tensor-core peak that LoRA training of a 0.5B model reaches at batch 2-4 x 512 tokens
DECODE_STEP_OVERHEAD_S = 0.015  # transformers' generate on a 24-layer model: kernel launches per new token
REFERENCE_FILE = Path(__file__).resolve().parents[1] / "docs" / "rm-scoring.json"
# Variance components of the best-of-n tax recorded by a cpu-profile run (scripts/time_budget.py
# --record-components), what size_design sizes the rtx4060 design from; the wider quantized arm is the one sized.
COMPONENTS_FILE = Path(__file__).resolve().parents[1] / "docs" / "variance-components.json"
WIDEST_ARM = "int4"


@dataclass(frozen=True)
class Lengths:
    """Tokens per sequence the work is counted with: a prompt, a chosen and a rejected reply of the preference data,
    and a generated reply (rollouts, the best-of-n pool, evaluation)."""
    prompt: float
    chosen: float
    rejected: float
    reply: float
    source: str
    # Mean tokens of a padded batch's longest sequence (prompt + reply), by sequences per batch: what padded work
    # (SFT and reward-model training, test-pair scoring) costs per sequence. None: the limits.
    longest: dict | None = None

    def padded(self, sequences: int, limit: float) -> float:
        """Tokens per sequence of a batch of `sequences` padded to its longest (the measured size at or above it)."""
        if not self.longest:
            return limit
        at_least = [k for k in self.longest if k >= sequences]
        return min(limit, self.longest[min(at_least) if at_least else max(self.longest)])


# HH-RLHF's harmless-base test split (../shared/hh-rlhf, 2,312 pairs), measured in characters at 4 per token: prompts
# average 121.5 tokens, chosen replies 41.9, rejected 52.7. Qwen2.5's tokenizer is not available offline here, so
# 4 characters per token (English BPE) stands in for it; the data stage measures the real counts (data_stats.json).
HH_RLHF_HARMLESS = {"prompt": 121.5, "chosen": 41.9, "rejected": 52.7}
# The same split, sequences of prompt + one reply (chosen or rejected) capped at 384 + 128 tokens: the mean longest of
# k sequences drawn at random (5,000 draws each; scripts/hh_lengths.py). Batches of 64 prompts reach 382 tokens: a
# PPO rollout batch, padded to its longest prompt, stays at the limit.
HH_RLHF_HARMLESS_LONGEST = {1: 162.3, 2: 221.9, 4: 289.7, 8: 357.3, 16: 415.5, 32: 458.8, 64: 487.9}
# Public judges' sizes, for what their scoring costs (judge_passes): parameters, and among them the embedding, a
# lookup that multiplies nothing. Skywork-Reward-V2-Llama-3.2-1B has Llama-3.2-1B-Instruct's shapes (16 layers,
# hidden 2,048, MLP 8,192, 8 KV heads of 64; vocabulary 128,256): 1.24 B parameters, as its card says, 0.97 B of them
# multiplied per token, 2.7x the Qwen2.5-0.5B reward models' backbone (0.36 B).
JUDGE_PARAMS = {"Skywork/Skywork-Reward-V2-Llama-3.2-1B": {"params": 1.24e9, "embedding": 128_256 * 2_048}}


def upper_bound(profile: Profile) -> Lengths:
    """Every sequence at the profile's limits: the most work the settings allow."""
    d = profile.data
    return Lengths(d.max_prompt_tokens, d.max_response_tokens, d.max_response_tokens, profile.ppo.max_new,
                   f"the profile's limits ({d.max_prompt_tokens} + {profile.ppo.max_new} tokens)")


def expected(profile: Profile, means: dict | None = None, source: str | None = None) -> Lengths:
    """Mean lengths of the prepared data (`means`: prompt, chosen, rejected; data_stats.json's token_lengths means),
    each capped at its limit; HH-RLHF's harmless-base means when none are given. A generated reply is counted at the
    chosen replies' mean (the SFT policy learns to answer like them), capped at ppo.max_new: an assumption."""
    d = profile.data
    m = means or HH_RLHF_HARMLESS
    chosen = min(m["chosen"], d.max_response_tokens)
    # the batch-longest table holds for HH-RLHF at the rtx4060 limits; other data or limits pad at the limits
    longest = HH_RLHF_HARMLESS_LONGEST if means is None and (d.max_prompt_tokens, d.max_response_tokens) == (
        384, 128) else None
    return Lengths(min(m["prompt"], d.max_prompt_tokens), chosen, min(m["rejected"], d.max_response_tokens),
                   min(m["chosen"], profile.ppo.max_new),
                   source or ("the prepared data's means" if means else "HH-RLHF harmless-base means (4 characters "
                                                                        "per token)"), longest)


def lengths_from_stats(profile: Profile, stats: dict) -> Lengths:
    """Expected lengths from a data stage's results (data_stats.json): for a profile whose data was prepared. A padded
    batch's longest sequence is read from the recorded percentiles of prompt and reply (summed: an approximation):
    one sequence at the means, up to 4 at the 90th percentiles, up to 16 at the 99th, more at the maxima."""
    t = stats["token_lengths"]
    d = profile.data
    base = expected(profile, {k: t[k]["mean"] for k in ("prompt", "chosen", "rejected")},
                    f"the prepared data's means ({stats.get('source', 'data')}, {stats.get('tokenizer', '')})")

    def longest(q: str) -> float:
        return min(t["prompt"][q], d.max_prompt_tokens) + min(max(t["chosen"][q], t["rejected"][q]),
                                                             d.max_response_tokens)

    if not all(q in t[k] for q in ("p90", "p99", "max") for k in ("prompt", "chosen", "rejected")):
        return base
    return dataclasses.replace(base, longest={1: base.prompt + base.chosen, 4: longest("p90"), 16: longest("p99"),
                                              64: longest("max")})


@dataclass(frozen=True)
class Machine:
    """What the prediction is for: the card's throughput and the CPU's reward-scoring rate."""
    gpu: str
    bf16_tflops: float
    bandwidth_gbs: float
    cpu_threads: int  # threads the reward model scores with
    cpu_tokens_per_s: float  # reward-model tokens per second on those threads, at the profile's model size
    source: str


@dataclass(frozen=True)
class Calibration:
    """Speeds measured on this machine (tinyrlhf.calibrate), replacing the assumptions: the share of the card's
    peak each kind of pass reached ("sft", "rm", "ppo" training steps; "score": forward passes without gradients),
    the seconds per decode step, and fixed seconds per job (loading models, building trainers: "sft", "rm", "bon",
    "ppo"; negligible beside a card's hours, not beside a CPU run's minutes)."""
    mfu: dict
    decode_step_s: float
    source: str
    job_overhead_s: dict = dataclasses.field(default_factory=dict)


def bf16_rate(tokens_per_s: dict) -> float:
    """A benchmarks/rm_scoring.py run's bf16 tokens/s: its second bf16 measurement where it has one (it measures bf16
    first and again last, as the first model measured ran slower)."""
    return tokens_per_s.get("bf16 (again)", tokens_per_s["bf16"])


def reference() -> dict:
    """The 1-thread real-size run of benchmarks/rm_scoring.py in docs/rm-scoring.json: bf16 reward-scoring tokens
    per second per thread and the CPU's float32 matrix-multiply GFLOPS on that thread, and how the rate scaled
    to the run with the most threads."""
    if not REFERENCE_FILE.exists():
        raise FileNotFoundError(f"{REFERENCE_FILE} is missing: run `python benchmarks/rm_scoring.py --size real "
                                f"--threads 1 --write-json {REFERENCE_FILE}`")
    data = json.loads(REFERENCE_FILE.read_text())
    kind = data.get("reference_kind", "avx2")  # runs are kept per CPU kind (env.cpu_kind); one is the reference
    runs = [r for r in data["kinds"][kind]["runs"].values() if r["size"] == "real"]
    one = next((r for r in runs if r["threads"] == 1), None)
    if one is None:
        raise FileNotFoundError(f"{REFERENCE_FILE} holds no 1-thread real-size run: run `python "
                                f"benchmarks/rm_scoring.py --size real --threads 1 --write-json {REFERENCE_FILE}`")
    most = max(runs, key=lambda r: r["threads"])
    rate = bf16_rate(one["tokens_per_s"])
    return {"bf16_tokens_per_s_per_thread": rate, "gemm_gflops_per_thread": one["gemm_gflops"],
            "cpu": one["cpu"], "cpu_kind": kind, "date": one["date"], "scaling_threads": most["threads"],
            "scaling": bf16_rate(most["tokens_per_s"]) / rate}


def cpu_gemm_gflops(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """This CPU's float32 matrix-multiply speed on `threads` threads (best of `repeats`), the yardstick that
    carries the reward-scoring rate measured on the reference machine over to this one."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    with torch_threads(threads):
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def desktop(cores: int = 8) -> Machine:
    """An RTX 4060 beside a desktop CPU with `cores` cores as fast per core as the reference machine's, the
    reward model scoring on all but one (PPOSettings.rm_threads): the 1-thread rate times the threads, at the
    per-thread efficiency the reference measured on its most threads (docs/rm-scoring.json)."""
    ref = reference()
    threads = max(1, cores - 1)
    return Machine(RTX4060["name"], RTX4060["bf16_tflops"], RTX4060["bandwidth_gbs"], threads,
                   ref["bf16_tokens_per_s_per_thread"] * threads * _efficiency(ref, threads),
                   f"{RTX4060['name']} (published figures) beside a {cores}-core CPU as fast per core as the "
                   f"reference ({ref['cpu']})")


def this_machine(cores: int, gpu: dict | None = None) -> Machine:
    """This machine: its CPU's reward-scoring rate scaled from the reference by matrix-multiply speed per thread,
    and its card when it has one (`gpu`: name, bf16_tflops, bandwidth_gbs, measured), else an RTX 4060."""
    ref = reference()
    threads = max(1, cores - 1)
    per_thread = ref["bf16_tokens_per_s_per_thread"] * cpu_gemm_gflops(1) / ref["gemm_gflops_per_thread"]
    card = gpu or {**RTX4060, "name": RTX4060["name"] + " (published figures; no GPU here)"}
    return Machine(card["name"], card["bf16_tflops"], card["bandwidth_gbs"], threads,
                   per_thread * threads * _efficiency(ref, threads),
                   f"{card['name']} beside this CPU ({cores} cores, reward model on {threads})")


def measured_gpu(seconds: float = 1.0) -> dict:
    """This process's card, measured: dense bf16 matmul TFLOPS (8192-square, what tensor cores reach) and device
    memory bandwidth (a 1 GiB copy reads and writes it once each)."""
    import torch

    name = torch.cuda.get_device_name()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    buf = torch.empty(2**29, device="cuda", dtype=torch.float16)

    def rate(fn, work: float) -> float:
        fn()
        torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
            torch.cuda.synchronize()
        return work * n / (time.perf_counter() - t0)

    tflops = rate(lambda: a @ a, 2 * 8192**3) / 1e12
    gbs = rate(lambda: buf.clone(), 2 * buf.numel() * 2) / 1e9
    return {"name": f"{name} (measured)", "bf16_tflops": tflops, "bandwidth_gbs": gbs}


def _efficiency(ref: dict, threads: int) -> float:
    """Tokens/s per thread at `threads` as a share of the 1-thread rate: measured up to the reference's most
    threads, held there beyond (an assumption: more cores scale no worse than the first two did)."""
    return 1.0 if threads == 1 else min(1.0, ref["scaling"] / ref["scaling_threads"])


def work_counts(profile: Profile) -> dict:
    """What the stages do, counted from the settings (predict's units; tests hold them to a real run's results)."""
    p, e = profile.ppo, profile.eval
    runs = sum(len(profile.ppo_rm_seeds(arm)) for arm in profile.arms) * p.runs_per_model
    second = e.second_judge == "same-recipe"  # one more reward model, which also scores the pool
    return {"reward_models": sum(len(profile.arm_seeds(arm)) for arm in profile.arms) + (e.judge == "heldout") + second,
            "pool_candidates": e.prompts * e.bon_pool,
            "pool_scorers": sum(len(profile.arm_seeds(arm)) for arm in profile.bon_arms + profile.bits_arms) + second,
            "ppo_runs": runs, "ppo_updates_per_run": p.steps, "checkpoints_per_run": e.checkpoints,
            "replies_per_run": e.prompts * e.samples + (e.checkpoints - 1) * e.prompts * e.checkpoint_samples,
            "cross_scored": runs * len(profile.arms) * e.prompts * e.cross_samples}


def predict(profile: Profile, machine: Machine, *, lengths: Lengths | None = None, mfu: float = MFU,
            decode_step_s: float = DECODE_STEP_OVERHEAD_S, calibration: Calibration | None = None) -> list[dict]:
    """Predicted hours per stage, in the order they run: [{stage, hours, gpu_hours, cpu_hours, dominated_by, work}].
    `lengths`: tokens per sequence (default: the profile's limits, an upper bound; `expected` for the data's).
    Padded batches (SFT and reward-model training, test-pair scoring) cost their longest sequence (Lengths.padded),
    packed scoring of generated replies the expected tokens; generation and PPO's passes on the card stay at the
    limits (a chunk decodes until its longest reply ends; TRL pads a rollout batch to its longest of 64 prompts,
    ~ the limit). `mfu` and `decode_step_s` are the two assumptions about the card; a `calibration` replaces them
    with measured figures and adds its per-job overheads. Jobs run `profile.workers` at a time."""
    spec = spec_for_profile(profile)
    n, backbone = spec.n_params, spec.n_params - spec.vocab * spec.hidden  # a reward model: no vocabulary projection
    d, s, r, p, e = profile.data, profile.sft, profile.rm, profile.ppo, profile.eval
    L, U = lengths or upper_bound(profile), upper_bound(profile)
    seq_limit = U.prompt + U.chosen
    train = 6 if s.gradient_checkpointing else 4  # FLOPs per parameter per token trained (one setting, every stage)
    rm_pair = 2 * L.padded(2 * r.batch_size, seq_limit)  # TRL pads a micro-batch's chosen and rejected together
    test_pair = 2 * L.padded(32, seq_limit)  # reward.score_texts: 32 texts at once, chosen then rejected
    scored_tokens = L.prompt + L.reply  # a generated reply scored on the CPU (packed, without padding)
    cal = calibration or Calibration({}, decode_step_s, "assumed")
    flops = {k: machine.bf16_tflops * 1e12 * cal.mfu.get(k, mfu) for k in ("base", "sft", "rm", "ppo", "score")}
    overhead, workers = cal.job_overhead_s, max(1, profile.workers)
    work = work_counts(profile)
    models = work["reward_models"]
    # Scoring with no policy training beside it on the idle card (eval.score_device; the prediction is for a card):
    # a forward pass, 2 FLOPs per backbone parameter per token. Otherwise on the CPU at its measured rate.
    idle_card = e.score_device == "cuda" or (e.score_device == "auto" and profile.device != "cpu")

    def idle_scoring(tokens: float) -> tuple[float, float]:  # (GPU seconds, CPU seconds)
        return (2 * backbone * tokens / flops["score"], 0.0) if idle_card else (0.0, tokens / machine.cpu_tokens_per_s)

    step_s = cal.decode_step_s if calibration else max(2 * n / (machine.bandwidth_gbs * 1e9), decode_step_s)
    rows = [_sft_row(profile, L, seq_limit, n, flops, overhead, step_s)]
    rm_tokens = r.max_steps * r.batch_size * r.accum * rm_pair
    validation_tokens = _validation_tokens(profile, test_pair)
    test_gpu, test_cpu = idle_scoring(r.eval_pairs * test_pair)
    where = "on the card" if idle_card else "on the CPU"
    rows.append(_row("rm", f"reward models (03), {models} models",
                     models * (train * backbone * rm_tokens / flops["rm"] + 2 * backbone * validation_tokens
                               / flops["rm"] + test_gpu + overhead.get("rm", 0.0)) / workers,
                     models * test_cpu / workers, _rm_work(profile, rm_tokens, where)))

    pool, scorers = work["pool_candidates"], work["pool_scorers"]
    judged = judge_passes(profile)  # a judge that is a model scores the pool where the scorers do
    pool_gpu, pool_cpu = idle_scoring((scorers + judged) * pool * scored_tokens)
    rows.append(_row("bon", "best-of-n (03)", pool / bon_sample_chunk(profile) * p.max_new * step_s
                     + (pool_gpu + scorers * overhead.get("bon", 0.0)) / workers, pool_cpu / workers, f"{pool} candidates generated, each scored by {scorers} reward models"
                     f"{_judge_words(profile, judged)} {where}"))

    runs = work["ppo_runs"]
    gpu_update, cpu_update = _ppo_update_seconds(profile, machine, n, backbone, step_s, flops, scored_tokens)
    rows.append(_row("ppo", f"PPO (04), {runs} runs", runs * (p.steps * gpu_update + overhead.get("ppo", 0.0))
                     / workers, runs * p.steps * cpu_update / workers,
                     f"{p.steps} updates of {p.ppo_batch} rollouts x {d.max_prompt_tokens + p.max_new} tokens, {p.ppo_epochs} epochs, "
                     f"per run"))

    rows.append(_evaluation_row(profile, runs, step_s, scored_tokens, machine, idle_scoring, where, workers, n,
                                flops["score"]))
    return rows


def judge_passes(profile: Profile) -> float:
    """What the judge's scoring of a token costs in reward-model forward passes (cost grows with the parameters a
    pass multiplies): 0 for the gold rule, 1 for the heldout judge (the reward models' recipe), a public judge's
    JUDGE_PARAMS over the reward models' backbone; one not listed there is assumed the reward models' size."""
    if profile.eval.judge == "gold":
        return 0.0
    size = JUDGE_PARAMS.get(profile.eval.judge)
    if size is None:
        return 1.0
    spec = spec_for_profile(profile)
    return (size["params"] - size["embedding"]) / (spec.n_params - spec.vocab * spec.hidden)


def _judge_words(profile: Profile, passes: float) -> str:
    """How the budget's best-of-n row names the judge that scores the pool beside the reward models."""
    judge = profile.eval.judge
    if judge == "gold":
        return ""
    if judge == "heldout":
        return " and the heldout judge"
    return f" and the judge ({judge}, {passes:.1f}x a reward model's forward pass)"


def _validation_tokens(profile: Profile, test_pair: float) -> float:
    """Tokens early stopping scores per reward model: its validation pairs every rm.eval_every steps up to the cap
    (rm.max_steps), on the card while it trains. A model that stops early takes less: the budget counts the cap."""
    r = profile.rm
    return (r.max_steps // r.eval_every) * r.validation_pairs * test_pair if r.early_stopping else 0.0


def _rm_work(profile: Profile, rm_tokens: float, where: str) -> str:
    r = profile.rm
    return (f"{rm_tokens / 1e6:.1f} M tokens trained per model ({len(profile.arms)} arms, {len(r.seeds)} seeds)"
            + (f" at the cap of {r.max_steps} steps (early stopping may take fewer), {r.validation_pairs} "
               f"validation pairs every {r.eval_every}" if r.early_stopping else "")
            + f"; {r.eval_pairs} test pairs scored {where} per model")


def _evaluation_row(profile: Profile, runs: int, step_s: float, scored_tokens: float, machine: Machine,
                    idle_scoring, where: str, workers: int, n: float, flops_score: float) -> dict:
    """04's evaluation: every run's and the SFT policy's replies generated on the card and judged on the CPU, and
    the cross matrix (every arm's reward model of the same seed) scored where idle scoring goes; inside the PPO
    jobs, `workers` at a time."""
    e, p, work = profile.eval, profile.ppo, work_counts(profile)
    replies = runs * work["replies_per_run"] + e.prompts * e.samples  # the SFT policy's replies too
    cross = work["cross_scored"]
    cross_gpu, cross_cpu = idle_scoring(cross * scored_tokens)
    # each reply is sampled (evaluate.sample's chunks), its KL to the reference taken (policy and reference forward)
    # and scored on the CPU by the run's reward model (the proxy) and by the judge (judge_passes of a proxy's cost)
    scorers = 1 + judge_passes(profile)
    kl = 2 * 2 * n * replies * (profile.data.max_prompt_tokens + p.max_new) / flops_score
    eval_gpu = replies / EVAL_SAMPLE_ROWS * p.max_new * step_s + kl + cross_gpu
    return _row("eval", "evaluation (04)", eval_gpu / workers,
                (scorers * replies * scored_tokens / machine.cpu_tokens_per_s + cross_cpu) / workers,
                f"{replies} replies generated and judged on the CPU, {cross} scored for the cross matrix {where}")


def _sft_row(profile: Profile, L: Lengths, seq_limit: float, n: float, flops: dict, overhead: dict,
             step_s: float) -> dict:
    """02: LoRA SFT (4N per token, 6N with checkpointing), and for the cpu profile's scratch base model its
    pre-training (every weight trained: 6N; batches of dialogues as long as the preference data's); then the
    evaluation before and after SFT: the held-out loss (a forward pass over sft.eval_pairs, batches of 16) and
    greedy replies to sft.sample_prompts (one at a time), each twice, and the SFT policy's eval.prompts x
    eval.samples sampled replies (evaluate.sample's chunks); generation at the limits, as everywhere here."""
    s, b, e, p = profile.sft, profile.base, profile.eval, profile.ppo
    sft_tokens = s.max_steps * s.batch_size * s.accum * L.padded(s.batch_size, seq_limit)
    base_tokens = (b.pretrain_steps * b.pretrain_batch * L.padded(b.pretrain_batch, seq_limit)
                   if b.model == SCRATCH_MODEL else 0)
    train = ((6 if s.gradient_checkpointing else 4) * sft_tokens / flops["sft"]
             + 6 * base_tokens / flops.get("base", flops["sft"])) * n
    loss = 2 * 2 * n * s.eval_pairs * L.padded(16, seq_limit) / flops["score"]
    greedy = 2 * s.sample_prompts * profile.data.max_response_tokens * step_s
    sampled = math.ceil(e.prompts * e.samples / EVAL_SAMPLE_ROWS) * p.max_new * step_s
    return _row("sft", "SFT (02)", train + loss + greedy + sampled + overhead.get("sft", 0.0), 0.0,
                f"{sft_tokens / 1e6:.1f} M tokens trained"
                + (f" (+ {base_tokens / 1e6:.1f} M pre-training the base model)" if base_tokens else "")
                + f"; {e.prompts * e.samples} replies sampled")


def _ppo_update_seconds(profile: Profile, machine: Machine, n: float, backbone: float, step_s: float,
                        flops: dict, scored_tokens: float) -> tuple[float, float]:
    """One PPO update: (card seconds, CPU scoring seconds left on the clock). The card generates the rollouts,
    runs four forward passes over them (policy log-probs, reference, value twice as TRL runs it) and ppo_epochs x
    policy and value training passes; the reward model scores on the card (ppo.rm_device) or on the CPU, behind
    the card's rollout work after the first chunk when overlapped (ppo.OverlappedScoring)."""
    p = profile.ppo
    tokens = p.ppo_batch * (profile.data.max_prompt_tokens + p.max_new)
    generate = p.ppo_batch / p.rollout_chunk * p.max_new * step_s
    # the policy's log-probs and the reference over the vocabulary; the value model (a backbone and a scalar head) twice
    forwards = (2 * 2 * n + 2 * 2 * backbone) * tokens / flops["score"]
    train = 4 if not profile.sft.gradient_checkpointing else 6
    gpu = generate + forwards + p.ppo_epochs * train * (n + backbone) * tokens / flops["ppo"]
    if p.rm_device == "cuda":
        return gpu + 2 * backbone * tokens / flops["score"], 0.0
    cpu = p.ppo_batch * scored_tokens / machine.cpu_tokens_per_s
    if p.overlap_scoring == "on" or (p.overlap_scoring == "auto" and profile.device != "cpu"):  # as train_ppo
        cpu = max(0.0, cpu - (generate + forwards) * (1 - p.rollout_chunk / p.ppo_batch))
    return gpu, cpu


def _row(key: str, stage: str, gpu_seconds: float, cpu_seconds: float, work: str) -> dict:
    gpu_h, cpu_h = gpu_seconds / 3600, cpu_seconds / 3600
    return {"key": key, "stage": stage, "hours": gpu_h + cpu_h, "gpu_hours": gpu_h, "cpu_hours": cpu_h,
            "dominated_by": "GPU" if gpu_h >= cpu_h else "CPU reward scoring", "work": work}


def total_hours(rows: list[dict]) -> float:
    return sum(r["hours"] for r in rows)


def milestones(profile: Profile, rows: list[dict]) -> dict:
    """What a user has by when, from `predict`'s rows: the best-of-n tax of every arm with its intervals (after SFT,
    the reward models and the pool, 03's end, before any PPO run), then each PPO run with its evaluation, and the
    whole study."""
    by_key = {r["key"]: r["hours"] for r in rows}
    runs = work_counts(profile)["ppo_runs"]
    return {"bon_tax_hours": by_key["sft"] + by_key["rm"] + by_key["bon"],
            "ppo_run_hours": (by_key["ppo"] + by_key["eval"]) / runs, "ppo_runs": runs,
            "study_hours": total_hours(rows)}


def recorded_components() -> dict:
    return json.loads(COMPONENTS_FILE.read_text())


def size_design(profile: Profile, machine: Machine, components: dict, ref_gain: float, *,
                lengths: Lengths | None = None, bon_hours: float = 3.1, study_hours: float = 24.0,
                seeds_options=range(2, 9), prompts_options=(64, 128, 256, 512)) -> dict:
    """The reward-model seeds and evaluation prompts that give the narrowest best-of-n tax interval within the
    time a user has: the best-of-n tax of every arm by `bon_hours`, the whole study (every arm's PPO runs) by
    `study_hours`. Half-widths come from the variance components of the paired differences an instrument run
    recorded (stats.variance_components: seed, prompt, residual; `ref_gain`: bf16's gain they are a share of),
    projected as stats.projection does; hours from `predict`. Returns every candidate and the chosen one (None
    when nothing fits)."""
    candidates = []
    for seeds in seeds_options:
        for prompts in prompts_options:
            design = dataclasses.replace(profile, rm=dataclasses.replace(profile.rm, seeds=tuple(range(seeds))),
                                         eval=dataclasses.replace(profile.eval, prompts=prompts))
            got = milestones(design, predict(design, machine, lengths=lengths))
            candidates.append({"seeds": seeds, "prompts": prompts, "bon_tax_hours": got["bon_tax_hours"],
                               "study_hours": got["study_hours"],
                               "half_width": projected_half_width(components, seeds, prompts / components["prompts"],
                                                             ref_gain),
                               "fits": got["bon_tax_hours"] <= bon_hours and got["study_hours"] <= study_hours})
    fitting = [c for c in candidates if c["fits"]]
    chosen = min(fitting, key=lambda c: (round(c["half_width"], 4), c["study_hours"])) if fitting else None
    return {"bon_hours": bon_hours, "study_hours": study_hours, "candidates": candidates, "chosen": chosen}


def run_plan(profile: Profile) -> list[str]:
    """What `make run` and 00_Setup say before a GPU profile starts anything long: the profile, its predicted hours
    (an RTX 4060 beside an 8-core desktop CPU, docs/time-budget.md's figures), what it downloads, and how to run the
    offline cpu profile instead. Nothing for the cpu profile (it downloads nothing and takes minutes)."""
    if profile.device == "cpu":
        return []
    at = milestones(profile, predict(profile, desktop(), lengths=expected(profile)))
    lines = [f"Profile {profile.name}: predicted {at['bon_tax_hours']:.1f} h to the best-of-n taxes and "
             f"{at['study_hours']:.1f} h for the whole run ({at['ppo_runs']} PPO runs) on an RTX 4060 beside an "
             "8-core CPU (a prediction from published figures: docs/time-budget.md; 00_Setup predicts for this "
             "machine)."]
    downloads = []
    if profile.base.model != SCRATCH_MODEL and not Path(profile.base.model).exists():
        weights = spec_for_profile(profile).n_params * 2 / 1e9  # bf16 on the hub
        downloads.append(f"{profile.base.model} at {profile.base.revision[:12]} (about {weights:.1f} GB)")
    if resolve_source(profile) == "hub":
        downloads.append(f"{profile.data.hub_id} ({', '.join(profile.data.subsets)}) at {profile.data.revision[:12]}")
    if profile.eval.judge in JUDGE_PARAMS:  # a public judge, in bf16 on the hub
        rev = profile.eval.judge_revision
        at = "the commit it pins at its first download" if rev == FIRST_DOWNLOAD else rev[:12]
        downloads.append(f"the judge {profile.eval.judge} at {at} (about "
                         f"{JUDGE_PARAMS[profile.eval.judge]['params'] * 2 / 1e9:.1f} GB)")
    if downloads:
        lines.append("Downloads from the Hugging Face hub on first use: " + "; ".join(downloads) + ".")
    lines.append("For the offline cpu profile (every stage for real on a tiny model, minutes): "
                 "TINYRLHF_PROFILE=cpu make run.")
    return lines
