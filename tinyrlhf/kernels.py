"""How a quantized reward model scores on the CPU: the kernel chosen for this machine, and the dense copy.

bitsandbytes 0.50 trains an int8 or NF4 layer on the CPU by dequantizing its weights to the activations' dtype and
multiplying densely (int8: `MatMul8bitFp`, `CB.to(A.dtype) * SCB / 127`; NF4: `dequantize_4bit(...).to(A.dtype)`,
then `F.linear`). For scoring it takes other paths whose speed depends on the CPU: int8 in eval mode quantizes the
activations too (LLM.int8, 0.46-0.62x bf16's tokens/s at Qwen2.5-0.5B's size), the train-mode path rebuilds every
dense weight on every call, and NF4 on a CPU with AVX512-BF16 repacks its weights at the first eval forward for a
fused kernel that computes in bf16 whatever the activations' dtype (0.67x bf16 there).

The **dense copy** does the training forward's dequantization once, when the model is loaded: each bitsandbytes
layer becomes an `nn.Linear` holding those same dequantized weights in the model's compute dtype, so scoring runs
the arithmetic the reward model was trained with, at the speed of a bf16 model of the same compute dtype on every
kind of CPU. It costs the dense weights' memory on the host (Qwen2.5-0.5B's linear layers: 0.7 GB in bf16,
1.4 GB in float32), so `choose` takes it when that fits in a quarter of the available RAM and otherwise falls back
to bitsandbytes' own kernels. A library: reward.load_reward_model applies the choice.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CPU_KERNELS as KERNELS
from .memory import format_bytes

DENSE_RAM_SHARE = 0.25  # "auto" takes the dense copy while it needs at most this share of the available RAM


class KernelError(RuntimeError):
    """A quantized layer that cannot be turned into its dense copy; the message says why."""


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def choose(precision: str, *, setting: str, compute_dtype, dense_bytes: int, available_bytes: int | None,
           native_bf16: bool, int8_matmul: str) -> dict:
    """The CPU scoring kernel of a reward model at `precision` ({"kernel", "dtype", "why"}), from the setting
    (`rm.cpu_kernel`), the model's compute dtype, the size of its dense copy, the RAM available and whether the CPU
    runs bf16 natively (AVX512-BF16 / AMX). A pure function, so every branch is testable with injected facts."""
    dtype = dtype_name(compute_dtype)
    if setting not in KERNELS:
        raise KernelError(f"rm.cpu_kernel must be one of {', '.join(KERNELS)}; got {setting!r}")
    if precision == "bf16":
        return {"kernel": "dense", "dtype": dtype, "why": f"the bf16 arm's own weights, computing in {dtype}"}
    size = format_bytes(dense_bytes)
    fits = available_bytes is not None and dense_bytes <= DENSE_RAM_SHARE * available_bytes
    if setting == "dense" or (setting == "auto" and fits):
        why = (f"rm.cpu_kernel={setting}: the {precision} weights dequantized once to {dtype} ({size}), the "
               f"arithmetic bitsandbytes trains {precision} with on the CPU, at a dense {dtype} model's speed")
        if setting == "auto":
            why += f" (within {DENSE_RAM_SHARE:.0%} of the {format_bytes(available_bytes)} available)"
        return {"kernel": "dense", "dtype": dtype, "why": why}
    reason = ("rm.cpu_kernel=bitsandbytes" if setting == "bitsandbytes" else
              f"a dense {dtype} copy ({size}) would take more than {DENSE_RAM_SHARE:.0%} of the "
              + ("available RAM (unknown)" if available_bytes is None else f"{format_bytes(available_bytes)} available"))
    if precision == "int8":
        how = {"dequantized": "int8 weights dequantized on every call (its CPU training forward)",
               "llm.int8": "LLM.int8 (activations quantized too)"}[int8_matmul]
        return {"kernel": f"bitsandbytes {int8_matmul}", "dtype": dtype, "why": f"{reason}: bitsandbytes' {how}"}
    how = f"NF4 weights dequantized to {dtype} on every call (the arm's arithmetic, pinned: kernels.pin_dequantized)"
    return {"kernel": "bitsandbytes", "dtype": dtype, "why": f"{reason}: bitsandbytes' {how}"}


def quantized_layers(model) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) of every bitsandbytes int8 or 4-bit linear layer in `model`."""
    import bitsandbytes as bnb

    kinds = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, kinds)]


def dense_weight(layer, dtype) -> torch.Tensor:
    """The weight a bitsandbytes layer multiplies with in its CPU training forward, as a dense [out, in] tensor in
    `dtype`, computed the way bitsandbytes 0.50 computes it there (autograd/_functions.py: MatMul8bitFp;
    backends/default/ops.py: gemm_4bit)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    if isinstance(layer, bnb.nn.Linear8bitLt):
        scb = layer.weight.SCB if getattr(layer.weight, "SCB", None) is not None else layer.state.SCB
        if scb is None:
            raise KernelError(f"{type(layer).__name__} holds no row scales (SCB): is it quantized?")
        return layer.weight.data.to(dtype).mul_(scb.unsqueeze(1).mul(1.0 / 127.0))
    state = layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # repacked by an eval forward on an AVX512-BF16 CPU
        raise KernelError("a 4-bit layer already repacked for bitsandbytes' fused CPU kernel: make the dense copy "
                          "right after loading, before any forward")
    return dequantize_4bit(layer.weight.data, state).to(dtype)


def dense_copy(model, dtype) -> int:
    """Replace every bitsandbytes layer of `model` by an `nn.Linear` holding its dense weight (`dense_weight`) in
    `dtype`, frozen; the quantized weights are released. Returns the number of layers replaced."""
    layers = quantized_layers(model)
    for parent, name, layer in layers:
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        dense.weight = nn.Parameter(dense_weight(layer, dtype), requires_grad=False)
        if layer.bias is not None:
            dense.bias = nn.Parameter(layer.bias.data.to(dtype), requires_grad=False)
        setattr(parent, name, dense)
    return len(layers)


def dense_bytes(model, dtype) -> int:
    """Bytes of the dense copy of `model`'s quantized layers in `dtype`."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(layer.in_features * layer.out_features * size for _, _, layer in quantized_layers(model))


# ------------------------------------------------------------------------------- one arithmetic per arm
# What an arm's quantized layers compute, in training and in scoring, on every device: the weights in the arm's
# format, dequantized to the compute dtype, times unquantized activations (the dense copy's arithmetic, exactly).
# bitsandbytes 0.50 would pick per device and mode instead: on CUDA an int8 layer trains and scores through
# LLM.int8 (MatMul8bitLt: activations quantized to int8, outlier columns above llm_int8_threshold split out), on the
# CPU it trains dequantized (MatMul8bitFp) and scores through LLM.int8 in eval mode; an NF4 layer goes through
# `gemm_4bit`, whose CUDA dispatch takes a fused kernel or dequantize + linear by the batch's token count and the
# card's architecture, and which on an AVX512-BF16 CPU repacks the weights for a fused bf16 kernel at the first eval
# forward. A reward model fitted under one of those and scored under another would not be the model that was
# trained; `pin_dequantized` fixes each layer's forward to the one arithmetic whatever the device, mode or batch.
ARITHMETIC = {"bf16": "dense weights in the compute dtype",
              "int8": "int8 weights (row-wise absmax) dequantized to the compute dtype, times unquantized activations "
                      "(as bitsandbytes' MatMul8bitFp computes them)",
              "int4": "NF4 weights (block-wise absmax) dequantized to the compute dtype, times unquantized "
                      "activations (bitsandbytes' dequantize_4bit, then F.linear)"}


class _Dequantized(torch.autograd.Function):
    """A quantized layer's product through its dequantized weights, the same on every device. Nothing is saved for
    backward: the input's gradient needs only the weights, dequantized again there. (bitsandbytes' MatMul8bitFp
    keeps the layer's input on its ctx, outside save_for_backward, for a weight gradient a frozen backbone never
    needs: activation checkpointing cannot free it, about 1.3 GiB over a Qwen2.5-0.5B int8 reward model's
    estimate on the card.)"""

    @staticmethod
    def forward(ctx, x, dequantize, bias):
        ctx.dequantize, ctx.has_bias = dequantize, bias is not None
        return nn.functional.linear(x, dequantize(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        grad_x = grad @ ctx.dequantize(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias


def _int8_forward(self, x):
    """bitsandbytes' Linear8bitLt.forward (0.50) with its dispatch (`bnb.matmul`) replaced by the dequantized
    product, computed as MatMul8bitFp computes it (`CB.to(dtype) * SCB / 127`)."""
    self.state.is_training = self.training
    if self.weight.CB is not None:
        self.init_8bit_state()
    if self.bias is not None and self.bias.dtype != x.dtype:
        self.bias.data = self.bias.data.to(x.dtype)
    state = self.state
    out = _Dequantized.apply(x, lambda dtype: state.CB.to(dtype).mul_(state.SCB.unsqueeze(1).mul(1.0 / 127.0)),
                             self.bias)
    if not self.state.has_fp16_weights and self.state.CB is not None:
        self.weight.data = self.state.CB
    return out


def _nf4_forward(self, x):
    """bitsandbytes' Linear4bit.forward (0.50) without the CPU repacking and with `matmul_4bit` replaced by the
    dequantized product (`dequantize_4bit(...).to(dtype)`, as its dequantize + linear path computes it)."""
    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    fix_4bit_weight_quant_state_from_module(self)
    if not self.compute_type_is_set:
        self.set_compute_type(x)
        self.compute_type_is_set = True
    inp_dtype = x.dtype
    if self.compute_dtype is not None:
        x = x.to(self.compute_dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    weight, state = self.weight, self.weight.quant_state
    return _Dequantized.apply(x, lambda dtype: dequantize_4bit(weight, state).to(dtype), bias).to(inp_dtype)


def pin_dequantized(model) -> int:
    """Fix every bitsandbytes int8 and NF4 layer of `model` to its arm's one arithmetic (ARITHMETIC): the forward of
    the layer object itself, so a PEFT LoRA wrapper around it (base_layer) keeps it. Returns the layers pinned."""
    import types

    import bitsandbytes as bnb

    pinned = 0
    for layer in model.modules():
        forward = _int8_forward if isinstance(layer, bnb.nn.Linear8bitLt) else \
            _nf4_forward if isinstance(layer, bnb.nn.Linear4bit) else None
        if forward is not None:
            layer.forward = types.MethodType(forward, layer)
            pinned += 1
    return pinned


def pinned(layer) -> bool:
    forward = getattr(layer, "__dict__", {}).get("forward")
    return getattr(forward, "__func__", None) in (_int8_forward, _nf4_forward)
