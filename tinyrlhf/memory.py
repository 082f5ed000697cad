"""Peak-memory estimates per stage (SFT, reward model, PPO) from a model description, and fit verdicts.

Estimates are deliberately simple and documented: they are monotone in model size, batch and sequence length and
err on the high side; they are not a profiler. All figures are bytes; GiB = 2**30.

Conventions
-----------
Weights, bytes per parameter: fp32 4, bf16 2; int8 (LLM.int8) 1 plus one fp32 scale per output row;
int4 (NF4) 0.5 plus one fp32 absmax per 64-weight block, or, with double quantization (the default, as in
``rm.double_quant``), one 8-bit absmax per block plus one fp32 scale per 256 blocks (about 0.516 B/param).
As in bitsandbytes, only the linear layers of the transformer blocks are quantized; embeddings, norms, biases
and heads stay in bf16.

Trained parameters cost 16 bytes each (weight + gradient + AdamW state):
  * full fine-tuning in bf16 mixed precision (the ZeRO paper's convention): bf16 weight 2 + bf16 gradient 2 +
    optimizer state 12 (fp32 master weight 4 + two fp32 moments 8); in fp32: weight 4 + gradient 4 + moments 8;
  * LoRA: peft keeps adapters in fp32, so weight 4 + gradient 4 + moments 8. An adapter of rank r on a
    d_in x d_out matrix has r*(d_in + d_out) parameters (A is r x d_in, B is d_out x r).
Quantized weights cannot be fully fine-tuned (only LoRA on top, i.e. QLoRA).

Activations, bytes per token per layer with 16-bit activations (Korthikanti et al. 2022, "Reducing activation
recomputation"; attention without flash kernels, so the a*s score term is an upper bound when SDPA/flash is used):
    attention 11h + 5*a*s,  MLP 3h + 4*I (GELU) or 3h + 8*I (gated: gate, up, act, product),  two norms 4h,
which is the paper's 34h + 5as for GPT-2 (I = 4h). Doubled for fp32 activations (CPU training).
Gradient checkpointing keeps each layer's input (h values per token) plus one layer recomputed in full.
Logits: in training, the fp32 copy for the loss plus its gradient, 8 bytes per element; in inference, the
model's output dtype (2 bytes, 4 in fp32); TRL's generation scores are fp32.

PPO (TRL's trl.experimental.ppo): static models (policy, reference, value model, reward model unless it is on the
host) plus the larger of the rollout phase (fp32 generation scores of the whole batch and a padded copy, KV cache
and the reference's logits per rollout chunk) and the training phase (activations and logits of one micro-batch
through policy and value model); see `estimate_ppo`.

Headroom: on a GPU, 0.5 GiB for the CUDA context and caching allocator plus 10% of everything else for
fragmentation; on the host, the Python process with its libraries (HOST_BASELINE: 0.5 GiB measured on CPU, 1 GiB
allowed beside a card).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .config import SCRATCH_MODEL, Profile, get_profile, resolve_device
from .cpu import native_bf16
from .runtime import reward_cpu_bf16

GiB = 2**30
MiB = 2**20

PRECISIONS = ("fp32", "bf16", "int8", "int4")
_ALIASES = {"nf4": "int4", "4bit": "int4", "8bit": "int8", "float32": "fp32", "bfloat16": "bf16", "fp16": "bf16"}
DENSE_BYTES = {"fp32": 4, "bf16": 2}
NF4_BLOCK = 64  # weights per absmax (bitsandbytes default blocksize for 4-bit)
NF4_DQ_BLOCK = 256  # absmax values per second-level fp32 scale with double quantization

TRAINED_BYTES = 16  # per trained parameter, both conventions (see module docstring)
OPTIMIZER_BYTES_MIXED = 12  # fp32 master weight + two fp32 AdamW moments
LOGIT_BYTES_TRAIN = 8  # fp32 logits for the loss + their gradient
GENERATION_SCORE_BYTES = 4  # transformers returns generation scores in fp32

CUDA_CONTEXT = GiB // 2
FRAGMENTATION = 0.10
# The host process: torch, transformers, TRL, PEFT, bitsandbytes and datasets imported measure 0.49 GiB RSS on CPU
# (torch 2.13, this project's pins); a CUDA process adds the CUDA runtime's host memory, not measured here: 1 GiB
# is allowed for it.
HOST_BASELINE = {"cpu": GiB // 2, "cuda": GiB}
# A reward model training in bf16 on a CPU with native bf16 (AVX512-BF16/AMX) runs oneDNN's bf16 kernels, which
# keep a compiled kernel and scratch space per matmul shape (every batch length is a new shape): measured on such a
# CPU (Intel Xeon with AMX, torch 2.13) at the cpu profile's size, 0.22 GiB after 60 steps, 0.30 after 240 and up to
# 0.6 over a full run, where float32 training stayed at the process baseline.
ONEDNN_BF16_CACHES = GiB // 2

DEFAULT_TARGETS = {"gpt2": ("c_attn", "c_proj"), "llama": ("q_proj", "k_proj", "v_proj", "o_proj")}
TRL_ROLLOUT_CHUNK = 64  # PPOConfig.local_rollout_forward_batch_size default
CPU_PREFIX = "cpu: "


class UnknownModelError(ValueError):
    """No architecture is known for a model name; the message says how to provide one."""


def _precision(p: str) -> str:
    p = _ALIASES.get(p, p)
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision {p!r}; allowed: {', '.join(PRECISIONS)} (nf4 is an alias of int4)")
    return p


def _act_bytes(precision: str) -> int:
    """Activation element size: quantized and bf16 models compute in bf16; fp32 models in fp32."""
    return 4 if precision == "fp32" else 2


@dataclass(frozen=True)
class ModelSpec:
    """What the estimates need to know about a decoder-only transformer.

    ``arch`` is "gpt2" (learned positions, LayerNorm, biases everywhere, GELU MLP) or "llama" (Llama/Qwen2:
    rotary positions, RMSNorm, gated MLP, optional grouped-query attention; the bias flags apply to it only).
    Zeros mean defaults: intermediate 4*hidden, n_kv_head n_head, head_dim hidden // n_head.
    """

    name: str
    n_layer: int
    hidden: int
    n_head: int
    vocab: int
    intermediate: int = 0
    arch: str = "gpt2"
    n_kv_head: int = 0
    head_dim: int = 0
    n_positions: int = 0  # learned position embeddings (gpt2 only)
    tie_embeddings: bool = True
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self):
        if self.arch not in DEFAULT_TARGETS:
            raise ValueError(f"arch must be one of {', '.join(DEFAULT_TARGETS)}; got {self.arch!r}")
        for name, default in (("intermediate", 4 * self.hidden), ("n_kv_head", self.n_head),
                              ("head_dim", self.hidden // self.n_head)):
            if not getattr(self, name):
                object.__setattr__(self, name, default)

    @classmethod
    def from_config(cls, cfg, name: str | None = None) -> ModelSpec:
        """From a transformers config: GPT2Config (n_layer, n_embd, ...) or Llama/Qwen2-style (num_hidden_layers,
        hidden_size, ...)."""
        name = name or getattr(cfg, "_name_or_path", "") or cfg.model_type
        tie = bool(getattr(cfg, "tie_word_embeddings", True))
        if hasattr(cfg, "n_embd"):
            return cls(name, n_layer=cfg.n_layer, hidden=cfg.n_embd, n_head=cfg.n_head, vocab=cfg.vocab_size,
                       intermediate=cfg.n_inner or 0, arch="gpt2", n_positions=cfg.n_positions, tie_embeddings=tie)
        bias = bool(getattr(cfg, "attention_bias", False))
        qwen2 = cfg.model_type == "qwen2"  # Qwen2 always has q/k/v biases and none on o_proj
        return cls(name, n_layer=cfg.num_hidden_layers, hidden=cfg.hidden_size, n_head=cfg.num_attention_heads,
                   vocab=cfg.vocab_size, intermediate=cfg.intermediate_size, arch="llama",
                   n_kv_head=getattr(cfg, "num_key_value_heads", None) or 0,
                   head_dim=getattr(cfg, "head_dim", None) or 0, tie_embeddings=tie,
                   qkv_bias=qwen2 or bias, out_bias=bias and not qwen2, mlp_bias=bool(getattr(cfg, "mlp_bias", False)))

    def linears(self) -> dict[str, list[tuple[int, int]]]:
        """Per layer: module name (as peft's target_modules match it) -> (d_in, d_out) of each matrix."""
        h, i = self.hidden, self.intermediate
        if self.arch == "gpt2":  # "c_proj" names both the attention output and the MLP output projection
            return {"c_attn": [(h, 3 * h)], "c_proj": [(h, h), (i, h)], "c_fc": [(h, i)]}
        q, kv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        return {"q_proj": [(h, q)], "k_proj": [(h, kv)], "v_proj": [(h, kv)], "o_proj": [(q, h)],
                "gate_proj": [(h, i)], "up_proj": [(h, i)], "down_proj": [(i, h)]}

    @property
    def lm_head_params(self) -> int:
        """Parameters of a separate output projection (zero when tied to the input embedding)."""
        return 0 if self.tie_embeddings else self.vocab * self.hidden

    @property
    def linear_params_per_layer(self) -> int:
        return sum(a * b for shapes in self.linears().values() for a, b in shapes)

    @property
    def n_params(self) -> int:
        h = self.hidden
        weights = self.linear_params_per_layer
        if self.arch == "gpt2":
            biases = sum(b for shapes in self.linears().values() for _, b in shapes)
            layer = weights + biases + 2 * 2 * h  # two LayerNorms with weight and bias
            rest = self.vocab * h + self.n_positions * h + 2 * h  # token + position embeddings, final LayerNorm
        else:
            lin = self.linears()
            biases = (self.qkv_bias * sum(b for k in ("q_proj", "k_proj", "v_proj") for _, b in lin[k])
                      + self.out_bias * h + self.mlp_bias * (2 * self.intermediate + h))
            layer = weights + biases + 2 * h  # two RMSNorms, weight only
            rest = self.vocab * h + h  # embedding, final norm
        return self.n_layer * layer + rest + self.lm_head_params


def _gpt2(name: str, n_layer: int, hidden: int, n_head: int) -> ModelSpec:
    return ModelSpec(name, n_layer=n_layer, hidden=hidden, n_head=n_head, vocab=50257, arch="gpt2", n_positions=1024)


KNOWN_MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _gpt2("gpt2", 12, 768, 12),  # 124M
        _gpt2("gpt2-medium", 24, 1024, 16),  # 355M
        _gpt2("gpt2-large", 36, 1280, 20),  # 774M
        _gpt2("gpt2-xl", 48, 1600, 25),  # 1.5B
        ModelSpec("Qwen/Qwen2.5-0.5B", n_layer=24, hidden=896, n_head=14, vocab=151936, intermediate=4864,
                  arch="llama", n_kv_head=2, tie_embeddings=True, qkv_bias=True),  # 494M
    )
}
_HUB_ALIASES = {f"openai-community/{n}": n for n in KNOWN_MODELS if n.startswith("gpt2")}
_HUB_ALIASES["Qwen/Qwen2.5-0.5B-Instruct"] = "Qwen/Qwen2.5-0.5B"


def known_spec(name: str) -> ModelSpec:
    """A model from the table, or a local model folder's config.json; otherwise a clear error."""
    key = _HUB_ALIASES.get(name, name)
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    if (Path(name) / "config.json").is_file():
        from transformers import AutoConfig

        return ModelSpec.from_config(AutoConfig.from_pretrained(name), name=name)
    raise UnknownModelError(
        f"no architecture known for model {name!r}; known models: {', '.join(KNOWN_MODELS)}. "
        "Pass spec=ModelSpec(...) or spec=ModelSpec.from_config(AutoConfig.from_pretrained(...)).")


def spec_for_profile(profile: Profile) -> ModelSpec:
    """The profile's base model: built from profile.base for the scratch model (as base_model.py builds it)."""
    b = profile.base
    if b.model != SCRATCH_MODEL:
        return known_spec(b.model)
    return ModelSpec(SCRATCH_MODEL, n_layer=b.num_layers, hidden=b.hidden_size, n_head=b.num_heads,
                     vocab=b.vocab_size, intermediate=b.intermediate_size, arch="llama", n_kv_head=b.num_kv_heads,
                     tie_embeddings=True, qkv_bias=True)  # a Qwen2, as base_model.scratch_config builds it


# ---------------------------------------------------------------------------------------------- components


def matrix_bytes(d_in: int, d_out: int, precision: str, *, double_quant: bool = True) -> int:
    """Storage of one d_in x d_out linear weight, quantization constants included."""
    precision = _precision(precision)
    n = d_in * d_out
    if precision in DENSE_BYTES:
        return n * DENSE_BYTES[precision]
    if precision == "int8":
        return n + 4 * d_out
    blocks = math.ceil(n / NF4_BLOCK)
    absmax = blocks + 4 * math.ceil(blocks / NF4_DQ_BLOCK) if double_quant else 4 * blocks
    return math.ceil(n / 2) + absmax


def linear_bytes(spec: ModelSpec, precision: str, *, double_quant: bool = True) -> int:
    """Bytes of every transformer layer's linear weights at `precision` (what bitsandbytes quantizes, and what a
    reward model's dense copy holds dense: kernels.dense_copy)."""
    return spec.n_layer * sum(matrix_bytes(a, b, precision, double_quant=double_quant)
                              for shapes in spec.linears().values() for a, b in shapes)


def weight_bytes(spec: ModelSpec, precision: str, *, lm_head: bool = True, double_quant: bool = True) -> int:
    """Bytes of the model's weights; lm_head=False drops an untied output projection (reward/value models)."""
    precision = _precision(precision)
    params = spec.n_params - (0 if lm_head else spec.lm_head_params)
    if precision in DENSE_BYTES:
        return params * DENSE_BYTES[precision]
    rest = params - spec.n_layer * spec.linear_params_per_layer
    return linear_bytes(spec, precision, double_quant=double_quant) + rest * DENSE_BYTES["bf16"]


def lora_params(spec: ModelSpec, r: int, target_modules=None) -> int:
    """Adapter parameters: r*(d_in + d_out) per targeted matrix, every layer."""
    targets = tuple(target_modules or DEFAULT_TARGETS[spec.arch])
    lin = spec.linears()
    unknown = [t for t in targets if t not in lin]
    if unknown:
        raise ValueError(f"target_modules {unknown} are not linear layers of {spec.name} ({spec.arch}); "
                         f"known: {', '.join(lin)}")
    return spec.n_layer * sum(r * (a + b) for t in targets for a, b in lin[t])


def layer_bytes_per_token(spec: ModelSpec, seq_len: int, act_bytes: int = 2) -> int:
    """Activation bytes one layer keeps per token for the backward pass (see the module docstring)."""
    h, i = spec.hidden, spec.intermediate
    mlp = 3 * h + (8 if spec.arch == "llama" else 4) * i
    return (11 * h + 5 * spec.n_head * seq_len + mlp + 4 * h) * act_bytes // 2


def activation_bytes(spec: ModelSpec, batch: int, seq_len: int, *, act_bytes: int = 2,
                     gradient_checkpointing: bool = False) -> int:
    tokens = batch * seq_len
    per_layer = layer_bytes_per_token(spec, seq_len, act_bytes)
    if gradient_checkpointing:
        return tokens * (spec.n_layer * spec.hidden * act_bytes + per_layer)
    return tokens * spec.n_layer * per_layer


EVAL_LOGIT_ROWS = 256  # logits.ROWS: positions per output-layer call in evaluation passes
EVAL_SAMPLE_ROWS = 64  # evaluate.sample's generation chunk
HELDOUT_BATCH = 16  # sft.heldout_loss's batch


def evaluation_bytes(spec: ModelSpec, *, rows: int, seq_len: int, act_bytes: int, sample_rows: int = 0,
                     scored: int | None = None) -> dict[str, int]:
    """An evaluation pass without gradients (sft.heldout_loss, evaluate.kl_per_reply, logits.token_logprobs): one
    layer's working set for `rows` sequences, their final hidden states, and EVAL_LOGIT_ROWS positions' logits at a
    time (in the model's dtype, a float32 copy and its log-softmax; fewer when only `scored` positions are); with
    `sample_rows`, sampling that many replies at once (evaluate.sample): generate's KV cache and one step's float32
    logits and scores."""
    tokens = rows * seq_len
    scored = tokens if scored is None else scored
    out = {"evaluation: forward (one layer)": tokens * layer_bytes_per_token(spec, seq_len, act_bytes),
           "evaluation: final hidden states": tokens * spec.hidden * act_bytes,
           "evaluation: logits of the scored positions": min(EVAL_LOGIT_ROWS, scored) * spec.vocab * (act_bytes + 8)}
    if sample_rows:
        out["evaluation: sampling KV cache"] = (2 * spec.n_layer * sample_rows * seq_len * spec.n_kv_head
                                                * spec.head_dim * act_bytes)
        out["evaluation: sampling logits"] = 2 * sample_rows * spec.vocab * GENERATION_SCORE_BYTES
    return out


def _peak_phase(static: dict, phases: dict[str, dict]) -> tuple[dict, str]:
    """static | the largest phase, and a note naming it and the others' sizes."""
    peak = max(phases, key=lambda k: sum(phases[k].values()))
    others = ", ".join(f"the {k} phase needs {format_bytes(sum(v.values()))}" for k, v in phases.items() if k != peak)
    return static | phases[peak], (f"peak during {peak}; {others} on top of the static "
                                   f"{format_bytes(sum(static.values()))}")


def _trained_parts(n: int, *, full: bool, precision: str) -> dict[str, int]:
    """Gradients and optimizer state (and the fp32 adapter weights for LoRA); full-model weights are counted
    with the base weights."""
    if not full:
        return {"trainable weights (fp32 adapters)": 4 * n, "gradients": 4 * n, "optimizer state (AdamW)": 8 * n}
    if precision == "fp32":
        return {"gradients": 4 * n, "optimizer state (AdamW)": 8 * n}
    return {"gradients": 2 * n, "optimizer state (AdamW)": OPTIMIZER_BYTES_MIXED * n}


# ---------------------------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """Peak memory of one stage. ``device_bytes``: on the device the stage trains on (GPU, or RAM for a CPU run);
    ``cpu_bytes``: host RAM besides it (a reward model kept on the CPU, the process itself). ``parts`` sums to
    ``total``; host parts are the keys starting with "cpu: "."""

    stage: str
    device_bytes: int
    cpu_bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    device: str = "cuda"
    note: str = ""

    @property
    def total(self) -> int:
        return self.device_bytes + self.cpu_bytes

    def breakdown(self) -> str:
        width = max(map(len, self.parts), default=0)
        lines = [f"{self.stage} on {self.device}: {format_bytes(self.device_bytes)} device, "
                 f"{format_bytes(self.cpu_bytes)} host"]
        lines += [f"  {k:<{width}}  {format_bytes(v):>10}" for k, v in self.parts.items()]
        if self.note:
            lines.append(f"  ({self.note})")
        return "\n".join(lines)

    __str__ = breakdown


def _finish(stage: str, device: str, dev: dict[str, int], host: dict[str, int] | None = None,
            note: str = "") -> Estimate:
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu'; got {device!r}")
    parts = dict(dev)
    parts[f"fragmentation ({FRAGMENTATION:.0%})"] = math.ceil(FRAGMENTATION * sum(dev.values()))
    if device == "cuda":
        parts["CUDA context and allocator"] = CUDA_CONTEXT
    host = {"python process and libraries": HOST_BASELINE[device], **(host or {})}
    parts |= {CPU_PREFIX + k: v for k, v in host.items()}
    on_host = sum(v for k, v in parts.items() if k.startswith(CPU_PREFIX))
    return Estimate(stage, sum(parts.values()) - on_host, on_host, parts, device, note)


def estimate_sft(spec: ModelSpec, *, precision: str = "bf16", lora_r: int | None = 16, batch: int, seq_len: int,
                 gradient_checkpointing: bool = False, target_modules=None, device: str = "cuda",
                 double_quant: bool = True, stage: str = "sft", eval_batch: int = HELDOUT_BATCH,
                 sample_rows: int = EVAL_SAMPLE_ROWS, scored: int | None = None) -> Estimate:
    """Supervised fine-tuning: LoRA of rank lora_r on a base at `precision`, or full fine-tuning (lora_r=None).
    Peak: the weights and trained parts, plus the larger of training (activations, logits) and evaluation (the
    held-out loss over `eval_batch` sequences, sampling `sample_rows` replies)."""
    precision = _precision(precision)
    full = lora_r is None
    if full and precision not in DENSE_BYTES:
        raise ValueError(f"full fine-tuning needs fp32 or bf16 weights, not {precision}; use LoRA (lora_r)")
    trained = spec.n_params if full else lora_params(spec, lora_r, target_modules)
    act = _act_bytes(precision)
    static = {"weights": weight_bytes(spec, precision, double_quant=double_quant),
              **_trained_parts(trained, full=full, precision=precision)}
    training = {"activations": activation_bytes(spec, batch, seq_len, act_bytes=act,
                                                gradient_checkpointing=gradient_checkpointing),
                "logits": batch * seq_len * spec.vocab * LOGIT_BYTES_TRAIN}
    evaluation = evaluation_bytes(spec, rows=eval_batch, seq_len=seq_len, act_bytes=act, sample_rows=sample_rows,
                                  scored=scored)
    dev, note = _peak_phase(static, {"training": training, "evaluation": evaluation})
    return _finish(stage, device, dev, note=note)


MAPPED_CHECKPOINT = "checkpoint pages mapped by the quantizing loader (page cache, reclaimable)"


def mapped_checkpoint(spec: ModelSpec, precision: str, checkpoint_precision: str | None, on_host: bool) -> dict:
    """A model quantized on the CPU is read through a memory map of its dense checkpoint, and the map stays open
    while the model lives (its unquantized embedding still points into it): every page read for quantization (the
    dense weights of the quantized layers) counts in the process RSS until memory pressure reclaims it (measured at
    Qwen2.5-0.5B's size: 1.49 GB of file-backed RSS beside 0.66 GB anonymous for an int8 model quantized from its
    fp32 checkpoint; benchmarks/real_size_memory.py). Counted so the host figure matches what a user sees."""
    if not on_host or checkpoint_precision is None or _precision(precision) in DENSE_BYTES:
        return {}
    # the pages read are those of the layers being quantized; the embedding's rows are touched only per token used
    return {MAPPED_CHECKPOINT: spec.n_layer * spec.linear_params_per_layer * DENSE_BYTES[_precision(
        checkpoint_precision)]}


def estimate_rm(spec: ModelSpec, *, precision: str = "bf16", lora_r: int | None = 16, batch: int, seq_len: int,
                gradient_checkpointing: bool = False, target_modules=None, device: str = "cuda",
                double_quant: bool = True, stage: str | None = None,
                checkpoint_precision: str | None = None, compute: str | None = None,
                native_bf16_host: bool = False) -> Estimate:
    """Reward-model training: backbone at `precision` (no LM head) + fp32 score head, LoRA (or full when
    lora_r=None and unquantized). `batch` counts preference pairs: chosen and rejected both run, 2*batch sequences.
    `checkpoint_precision`: the dtype of the checkpoint it is loaded from (see `mapped_checkpoint`).
    `native_bf16_host`: a CPU with native bf16, where bf16 training adds oneDNN's caches (ONEDNN_BF16_CACHES)."""
    precision = _precision(precision)
    full = lora_r is None
    if full and precision not in DENSE_BYTES:
        raise ValueError(f"full fine-tuning needs fp32 or bf16 weights, not {precision}; use LoRA (lora_r)")
    trained = spec.n_params - spec.lm_head_params if full else lora_params(spec, lora_r, target_modules)
    # loaded in the compute dtype (reward.load_backbone), its linear layers quantized at `precision`
    held = compute or (precision if precision in DENSE_BYTES else "bf16")
    dev = {"weights": _reward_model_bytes(spec, precision, held, False, double_quant) - 4 * spec.hidden,
           **_trained_parts(trained, full=full, precision=precision),
           "score head (fp32, trained)": TRAINED_BYTES * spec.hidden}  # hidden -> 1
    dev["activations"] = activation_bytes(spec, 2 * batch, seq_len, act_bytes=_act_bytes(compute or precision),
                                          gradient_checkpointing=gradient_checkpointing)
    host = mapped_checkpoint(spec, precision, checkpoint_precision, on_host=device == "cpu")
    if device == "cpu" and compute == "bf16" and native_bf16_host:
        host = {**host, "oneDNN's bf16 kernels and their caches": ONEDNN_BF16_CACHES}
    return _finish(stage or f"rm_{precision}", device, dev, host)


def _reward_model_bytes(spec: ModelSpec, precision: str, compute: str, dense_copy: bool, double_quant: bool) -> int:
    """A reward model's weights (no LM head, fp32 score head) where it scores: loaded in its compute dtype
    (reward.load_backbone: a bf16 model computes in float32 on a CPU without native bf16), quantized linear layers at
    their precision unless it scores through their dense copy in the compute dtype (kernels.dense_copy)."""
    dense = weight_bytes(spec, compute, lm_head=False) + 4 * spec.hidden
    if _precision(precision) in DENSE_BYTES or dense_copy:
        return dense
    return dense - linear_bytes(spec, compute) + linear_bytes(spec, precision, double_quant=double_quant)


def _rollout_phase(spec: ModelSpec, *, batch: int, chunk: int, seq: int, response_len: int, act: int,
                   forward: int) -> dict[str, int]:
    """PPO's rollout, per chunk of `chunk` sequences (ppo.rollout_logprobs_per_chunk): the policy's log-probs from
    logits at the response positions, the KV cache, TRL's reference forward (every position's logits, the response's
    copied to float32 by the patched log-softmax), and one layer's working set of the largest forward (`forward`:
    the reference, value and reward forwards run one after another, without grad)."""
    return {"rollout: the batch's log-probs, one chunk's from logits at its response positions":
            batch * response_len * 4 + min(EVAL_LOGIT_ROWS, chunk * response_len) * spec.vocab * (act + 8),
            "rollout: KV cache": 2 * spec.n_layer * chunk * seq * spec.n_kv_head * spec.head_dim * act,
            "rollout: reference logits (+ the response's in float32)":
            chunk * spec.vocab * (seq * act + response_len * 4),
            "rollout: forward (one layer)": forward}


def estimate_ppo(policy_spec: ModelSpec, *, policy_precision: str = "bf16", rm_precision: str = "bf16",
                 rm_spec: ModelSpec | None = None, rm_on_cpu: bool = True, ref_is_disabled_adapter: bool = True,
                 value_from_rm: bool = True, batch: int, mini_batch: int, query_len: int, response_len: int,
                 lora_r: int = 16, target_modules=None, rollout_chunk: int | None = None,
                 gradient_checkpointing: bool = False, device: str = "cuda", double_quant: bool = True,
                 stage: str | None = None, rm_checkpoint_precision: str | None = None,
                 rm_compute: str = "bf16", rm_dense_copy: bool = False,
                 eval_sample_rows: int = EVAL_SAMPLE_ROWS) -> Estimate:
    """TRL PPO (trl.experimental.ppo) with a LoRA policy.

    Static: the policy (base + LoRA); the reference (nothing extra when it is the policy with its adapter
    disabled, else a frozen copy of the base); the value model (TRL runs it as a separate backbone: the reward
    model's at rm_precision when value_from_rm, else the policy's, + LoRA + fp32 head); the reward model
    (weights + one layer's inference activations) on the host when rm_on_cpu, counted in cpu_bytes, computing in
    `rm_compute` (the host's dtype there, bf16 on a card) and, with `rm_dense_copy`, holding its quantized layers
    dense in that dtype (kernels.dense_copy).
    Peak: static + the larger of two phases.
      rollout: per chunk of `rollout_chunk` sequences (local_rollout_forward_batch_size): generate()'s fp32 scores
        and their stacked copy, made per-token log-probs at once by ppo.rollout_logprobs_per_chunk (TRL 1.12 alone
        keeps 2 * batch * response_len * vocab * 4 bytes), the KV cache, the reference's full logits, one layer's
        working set (also the reward model's); plus the batch's per-token log-probs.
      training: `mini_batch` sequences per forward/backward (TRL's per_device_train_batch_size) through the
        policy and the value backbone, plus the policy's training logits.
    """
    policy_precision, rm_precision = _precision(policy_precision), _precision(rm_precision)
    rm_spec = rm_spec or policy_spec
    chunk = min(batch, rollout_chunk or TRL_ROLLOUT_CHUNK)
    seq = query_len + response_len
    act = _act_bytes(policy_precision)
    policy_weights = weight_bytes(policy_spec, policy_precision, double_quant=double_quant)
    value_spec, value_precision = (rm_spec, rm_precision) if value_from_rm else (policy_spec, policy_precision)
    trained = (lora_params(policy_spec, lora_r, target_modules) + lora_params(value_spec, lora_r, target_modules)
               + value_spec.hidden)
    static = {"policy weights": policy_weights,
              "reference model": 0 if ref_is_disabled_adapter else policy_weights,
              "value model backbone": weight_bytes(value_spec, value_precision, lm_head=False,
                                                   double_quant=double_quant),
              **_trained_parts(trained, full=False, precision=policy_precision)}
    rm_compute = _precision(rm_compute)
    rm_weights = _reward_model_bytes(rm_spec, rm_precision, rm_compute, rm_dense_copy, double_quant)
    rm_forward = chunk * seq * layer_bytes_per_token(rm_spec, seq, _act_bytes(rm_compute))
    policy_forward = chunk * seq * layer_bytes_per_token(policy_spec, seq, act)
    rm_on_host = rm_on_cpu and device == "cuda"  # on a CPU run everything is host RAM
    host = {"reward model weights": rm_weights, "reward model forward (one layer)": rm_forward} if rm_on_host else {}
    static |= {} if rm_on_host else {"reward model weights": rm_weights}
    host |= mapped_checkpoint(rm_spec, rm_precision, rm_checkpoint_precision, on_host=rm_on_cpu or device == "cpu")
    rollout = _rollout_phase(policy_spec, batch=batch, chunk=chunk, seq=seq, response_len=response_len, act=act,
                             forward=policy_forward if rm_on_host else max(policy_forward, rm_forward))
    training = {"training: activations (policy + value)":
                activation_bytes(policy_spec, mini_batch, seq, act_bytes=act,
                                 gradient_checkpointing=gradient_checkpointing)
                + activation_bytes(value_spec, mini_batch, seq, act_bytes=_act_bytes(value_precision),
                                   gradient_checkpointing=gradient_checkpointing),
                "training: logits": mini_batch * seq * policy_spec.vocab * LOGIT_BYTES_TRAIN}
    # checkpoints: KL over `chunk` replies at a time (evaluate.kl_per_reply) and sampling (evaluate.sample); the
    # reward models score on the host
    evaluation = evaluation_bytes(policy_spec, rows=chunk, seq_len=seq, act_bytes=act, sample_rows=eval_sample_rows,
                                  scored=chunk * (response_len + 1))
    dev, note = _peak_phase(static, {"rollout": rollout, "training": training, "evaluation": evaluation})
    return _finish(stage or f"ppo_{rm_precision}", device, dev, host, note)


# ---------------------------------------------------------------------------------------------- profiles


def _targets(spec: ModelSpec, targets) -> tuple:
    """The profile's LoRA targets, or the architecture's attention projections when they are another arch's names
    (e.g. a GPT-2 spec estimated with the rtx4060 profile's q_proj/k_proj/...)."""
    names = spec.linears()
    return tuple(targets) if all(t in names for t in targets) else DEFAULT_TARGETS[spec.arch]


def estimate_profile(profile: Profile, spec: ModelSpec | None = None, *, device: str | None = None,
                     host_compute: str | None = None) -> dict[str, Estimate]:
    """Estimates of every stage of a profile: "sft", "rm_<p>" and "ppo_<p>" for p in profile.rm.precisions.

    device: "cuda" or "cpu" (default: cpu for a cpu profile, else cuda). Training runs in base.train_dtype (as
    runtime.train_dtype decides: for "auto", fp32 on the CPU and bf16 on the GPU). Gradient checkpointing follows
    profile.sft for every stage. PPO trains `ppo.mini_batch` sequences per forward/backward (TRL's per_device_train_batch_size).
    """
    device = device or ("cpu" if profile.device == "cpu" else "cuda")
    spec = spec or spec_for_profile(profile)
    # the reward models' compute dtype on this host (runtime.reward_compute_dtype)
    host_compute = host_compute or ("bf16" if reward_cpu_bf16(profile.rm.cpu_dtype, native_bf16()) else "fp32")
    d, s, r, p = profile.data, profile.sft, profile.rm, profile.ppo
    # as runtime.train_dtype: base.train_dtype, "auto" being bf16 on the card and float32 on the CPU
    t = profile.base.train_dtype
    train_precision = t if t != "auto" else "fp32" if device == "cpu" else "bf16"
    # reward models train in the set dtype, else in the device's compute dtype (reward.train_reward_model)
    rm_train_compute = t if t != "auto" else host_compute if device == "cpu" else None
    ckpt = s.gradient_checkpointing
    seq = d.max_prompt_tokens + d.max_response_tokens
    e = profile.eval
    sampled = min(EVAL_SAMPLE_ROWS, e.prompts * e.samples)  # replies generated at once in evaluation
    heldout = min(HELDOUT_BATCH, s.eval_pairs)
    out = {"sft": estimate_sft(spec, precision=train_precision, lora_r=s.lora_r, batch=s.batch_size, seq_len=seq,
                               gradient_checkpointing=ckpt, target_modules=_targets(spec, s.target_modules),
                               device=device, eval_batch=heldout, sample_rows=sampled,
                               scored=heldout * (d.max_response_tokens + 1))}
    for prec in r.precisions:
        out[f"rm_{prec}"] = estimate_rm(spec, precision=prec, lora_r=r.lora_r, batch=r.batch_size, seq_len=seq,
                                        gradient_checkpointing=ckpt, target_modules=_targets(spec, r.target_modules),
                                        device=device, double_quant=r.double_quant, stage=f"rm_{prec}",
                                        checkpoint_precision=train_precision,
                                        compute=rm_train_compute, native_bf16_host=host_compute == "bf16")
    for prec in r.precisions:
        out[f"ppo_{prec}"] = estimate_ppo(
            spec, policy_precision=train_precision, rm_precision=prec, rm_on_cpu=p.rm_device == "cpu",
            batch=p.ppo_batch, mini_batch=p.micro_batch, rollout_chunk=p.rollout_chunk, value_from_rm=False,
            query_len=d.max_prompt_tokens, response_len=p.max_new,
            lora_r=p.lora_r, target_modules=_targets(spec, p.target_modules), gradient_checkpointing=ckpt,
            device=device, double_quant=r.double_quant, stage=f"ppo_{prec}", rm_checkpoint_precision=train_precision,
            # the reward model computes in the host's dtype on the host (bf16 on the card), int8 and int4 through
            # their dense copy in it unless told not to
            rm_compute=host_compute if p.rm_device == "cpu" else "bf16",
            rm_dense_copy=p.rm_device == "cpu" and r.cpu_kernel != "bitsandbytes",
            eval_sample_rows=sampled)
    return out


# ---------------------------------------------------------------------------------------------- verdicts

VERDICTS = ("fits", "tight", "will not fit")


def format_bytes(n: float | None, missing: str = "—") -> str:
    """Human-readable binary size: 512 B, 3.0 KiB, 12.4 MiB, 7.6 GiB; `missing` for None or non-finite."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return missing
    n = float(n)
    for unit, size in (("TiB", 2**40), ("GiB", GiB), ("MiB", MiB), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fits(estimate: Estimate | int, capacity_bytes: int, tight_margin: float = 0.85) -> tuple[str, str]:
    """("fits" | "tight" | "will not fit", reason): tight above tight_margin of the capacity.
    An Estimate is judged by its device bytes; pass an int to judge any other figure."""
    need = estimate.device_bytes if isinstance(estimate, Estimate) else int(estimate)
    reason = f"needs {format_bytes(need)} of {format_bytes(capacity_bytes)}"
    if need <= tight_margin * capacity_bytes:
        return "fits", reason
    if need <= capacity_bytes:
        return "tight", f"{reason} (above {tight_margin:.0%})"
    return "will not fit", f"{reason} (short by {format_bytes(need - capacity_bytes)})"


def stage_verdicts(profile: Profile, *, gpu_bytes: int | None, ram_bytes: int, spec: ModelSpec | None = None,
                   host_compute: str | None = None) -> list[dict]:
    """One row per stage: stage, device, estimate_bytes, capacity_bytes, verdict, reason. With a GPU the device
    bytes are judged against it and the host bytes against RAM (the worse verdict wins); without one
    (gpu_bytes=None) the whole stage is judged against RAM."""
    device = "cuda" if gpu_bytes else "cpu"
    rows = []
    for stage, est in estimate_profile(profile, spec, device=device, host_compute=host_compute).items():
        if device == "cpu":
            verdict, reason = fits(est.total, ram_bytes)
            need, cap = est.total, ram_bytes
        else:
            gv, greason = fits(est.device_bytes, gpu_bytes)
            hv, hreason = fits(est.cpu_bytes, ram_bytes)
            verdict = max(gv, hv, key=VERDICTS.index)
            reason = f"GPU {greason}; RAM {hreason}"
            need, cap = est.device_bytes, gpu_bytes
        rows.append({"stage": stage, "device": device, "estimate_bytes": need, "capacity_bytes": cap,
                     "verdict": verdict, "reason": reason})
    return rows


def card_fits(profile: Profile, gib: float, spec: ModelSpec | None = None) -> bool:
    """Does every stage of the profile fit (possibly tightly) on a GPU with `gib` GiB?"""
    return all(fits(e, int(gib * GiB))[0] != "will not fit"
               for e in estimate_profile(profile, spec, device="cuda").values())


def stage_estimate(profile: Profile, stage: str, *, device: str | None = None) -> dict:
    """The estimate a stage records beside its measured peak ("sft", "rm_<p>", "ppo_<p>").

    `comparable_bytes` is what the measurement sees: on a GPU the device figure (CUDA max allocated), on the CPU
    everything, since the process peak RSS holds the models, the activations and the Python process alike.
    """
    device = device or resolve_device(profile)
    est = estimate_profile(profile, device=device)[stage]
    return {"stage": stage, "device": device, "device_bytes": est.device_bytes, "cpu_bytes": est.cpu_bytes,
            "comparable_bytes": est.device_bytes if device == "cuda" else est.total, "parts": dict(est.parts)}


def measured_vs_estimate(profile: Profile, stage: str, meter_result: dict) -> dict:
    """A stage's measured peak (a `results.MemoryMeter` result) beside the estimate, for its results JSON."""
    est = stage_estimate(profile, stage)
    measured = meter_result["peak_bytes"]
    return {"stage": stage, "device": est["device"],
            "measured": "cuda max allocated" if "cuda_max_allocated_bytes" in meter_result else "process peak RSS",
            "measured_bytes": measured, "cuda_max_reserved_bytes": meter_result.get("cuda_max_reserved_bytes"),
            "estimate_bytes": est["comparable_bytes"], "ratio": measured / est["comparable_bytes"],
            "estimate_parts": est["parts"]}


def validation_rows(record: dict) -> list[dict]:
    """Measured peaks at a real size (the JSON benchmarks/real_size_memory.py writes) beside this estimator's CPU
    figures for the same profile, model and settings: stage, measured_bytes, estimate_bytes, ratio."""
    device = record.get("device", "cpu")
    profile = get_profile(record["profile"], overrides=record["settings"] | {"base.model": record["model"]})
    kind = record.get("cpu", {}).get("kind")
    host = None if kind is None else "bf16" if kind == "avx512-bf16" else "fp32"  # the record's CPU, not this one
    estimates = estimate_profile(profile, device=device, host_compute=host)
    # what the measurement sees: CUDA max allocated on a GPU, the whole process RSS on the CPU
    comparable = {k: e.device_bytes if device == "cuda" else e.total for k, e in estimates.items()}
    return [{"stage": m["stage"], "measured_bytes": m["measured_bytes"], "estimate_bytes": comparable[m["stage"]],
             "ratio": m["measured_bytes"] / comparable[m["stage"]]} for m in record["measured"]]

