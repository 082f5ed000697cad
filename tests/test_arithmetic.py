"""One arithmetic per arm, from training to scoring, on every device (kernels.ARITHMETIC).

bitsandbytes 0.50 picks an int8 or NF4 layer's matmul by device and mode. Its CUDA branch is reached here without a
card: inputs on the `meta` device (any device but the CPU takes it), with the functions it dispatches to counted,
and, for whole training runs on the CPU, `bnb.matmul` replaced by what it does on CUDA (MatMul8bitLt, LLM.int8).
"""

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.autograd import _functions as bnb_functions
from conftest import TINY_WORLD

from tinyrlhf import kernels
from tinyrlhf.config import get_profile
from tinyrlhf.reward import load_backbone, train_reward_model


def _backbone(tiny_world, precision):
    _, paths = tiny_world
    tok_pad = 0
    model, _ = load_backbone(str(paths.sft_merged), precision, pad_token_id=tok_pad, device="cpu",
                             compute_dtype=torch.float32)
    kind = bnb.nn.Linear8bitLt if precision == "int8" else bnb.nn.Linear4bit
    layers = [m for m in model.modules() if isinstance(m, kind)]
    assert layers
    return model, layers


class Counted:
    """Stands in for a bitsandbytes function: counts its calls and returns an empty output of the right shape on
    the input's device (meta stays meta)."""

    def __init__(self, out_features):
        self.calls, self.out = 0, out_features

    def __call__(self, x, *args, **kwargs):
        self.calls += 1
        return torch.empty((*x.shape[:-1], self.out), device=x.device, dtype=x.dtype)


def test_int8_on_a_card_bitsandbytes_trains_under_llm_int8_and_the_pin_keeps_the_dequantized_product(
        tiny_world, monkeypatch):
    _, layers = _backbone(tiny_world, "int8")
    layer = layers[0]
    lt, fp, pinned = Counted(layer.out_features), Counted(layer.out_features), Counted(layer.out_features)
    monkeypatch.setattr(bnb_functions.MatMul8bitLt, "apply", lt)
    monkeypatch.setattr(bnb_functions.MatMul8bitFp, "apply", fp)
    monkeypatch.setattr(kernels._Dequantized, "apply", pinned)
    x = torch.empty(2, 3, layer.in_features, device="meta")

    layer.train()
    layer(x)  # bitsandbytes' own dispatch, off the CPU, in training: LLM.int8
    assert (lt.calls, fp.calls) == (1, 0)

    kernels.pin_dequantized(layer)
    for mode in (True, False):
        layer.train(mode)
        layer(x)  # the card
        layer(torch.zeros(2, 3, layer.in_features))  # the CPU
    assert (lt.calls, fp.calls, pinned.calls) == (1, 0, 4) and kernels.pinned(layer)


def test_nf4_bitsandbytes_dispatches_to_gemm_4bit_and_the_pin_dequantizes(tiny_world, monkeypatch):
    _, layers = _backbone(tiny_world, "int4")
    layer = layers[0]
    gemm = Counted(layer.out_features)

    class Ops:  # torch.ops.bitsandbytes.gemm_4bit.default: a fused kernel or dequantize + linear, picked per card
        default = gemm

    monkeypatch.setattr(torch.ops.bitsandbytes, "gemm_4bit", Ops)
    x = torch.empty(2, 3, layer.in_features, device="meta")
    with torch.no_grad():
        layer.eval()
        layer(x)
    assert gemm.calls == 1

    kernels.pin_dequantized(layer)
    dequantized = []
    real = kernels._Dequantized.apply
    monkeypatch.setattr(kernels._Dequantized, "apply", lambda *a: dequantized.append(1) or real(*a))
    cpu = torch.randn(2, 3, layer.in_features)
    for mode in (True, False):
        layer.train(mode)
        with torch.no_grad():
            layer(cpu)
        layer(cpu.requires_grad_()).sum().backward()
    assert gemm.calls == 1 and len(dequantized) == 4


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_pinned_layer_computes_exactly_the_dense_copy(tiny_world, precision):
    """The pinned layer and the dense copy (what scoring uses on the CPU and on the card) are one function: the same
    outputs bit for bit, in train and eval mode, and the same input gradients."""
    _, layers = _backbone(tiny_world, precision)
    kernels.pin_dequantized(layers[0])
    layer = layers[0]
    weight = kernels.dense_weight(layer, torch.float32)
    bias = None if layer.bias is None else layer.bias.data.float()
    x = torch.randn(4, 5, layer.in_features)
    for mode in (True, False):
        layer.train(mode)
        with torch.no_grad():
            assert torch.equal(layer(x), torch.nn.functional.linear(x, weight, bias))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    (layer(a) ** 2).sum().backward()
    (torch.nn.functional.linear(b, weight, bias) ** 2).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_reward_model_training_takes_the_pinned_path_where_bitsandbytes_would_take_its_cuda_one(
        tiny_world, tmp_path, monkeypatch, precision):
    """A real RewardTrainer run with bitsandbytes' dispatch made to do what it does on CUDA (int8: MatMul8bitLt,
    LLM.int8, in training too; NF4: gemm_4bit through matmul_4bit): none of it is reached, every quantized layer
    multiplies through the pinned dequantized product."""
    _, paths = tiny_world
    cuda_dispatch = []

    def llm_int8(A, B, out=None, state=None, threshold=0.0, bias=None):
        cuda_dispatch.append("MatMul8bitLt")
        return bnb_functions.MatMul8bitLt.apply(A, B, out, bias, state)

    real_4bit = bnb.matmul_4bit
    monkeypatch.setattr(bnb, "matmul", llm_int8)
    monkeypatch.setattr(bnb, "matmul_4bit", lambda *a, **k: cuda_dispatch.append("matmul_4bit") or real_4bit(*a, **k))
    pinned = []
    real = kernels._Dequantized.apply
    monkeypatch.setattr(kernels._Dequantized, "apply", lambda *a: pinned.append(1) or real(*a))

    from tinyrlhf import base_model, data

    profile = get_profile("cpu", overrides=TINY_WORLD | {"rm.max_steps": 2})
    tokenizer = base_model.load_tokenizer(paths.sft_merged)
    run = train_reward_model(data.read_pairs(paths.data_file("train"))[:32], init_path=str(paths.sft_merged),
                             tokenizer=tokenizer, precision=precision, out_dir=tmp_path / "rm", batch_size=4, lr=1e-3,
                             max_steps=2, target_modules=profile.rm.target_modules, profile=profile)
    assert run["loss_curve"] and cuda_dispatch == [] and pinned


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_pinned_layer_keeps_no_activation_for_backward(tiny_world, precision):
    """Gradient checkpointing frees what autograd saves; bitsandbytes' MatMul8bitFp (its CPU training path for int8)
    keeps the layer's input on its ctx besides, out of checkpointing's reach. The pinned product keeps none."""
    import weakref

    _, layers = _backbone(tiny_world, precision)
    layer = layers[0]
    x = torch.randn(2, 3, layer.in_features, requires_grad=True)

    def kept(layer):
        hidden = x * 2  # an activation inside the network
        out = layer(hidden)
        ref = weakref.ref(hidden)
        del hidden
        return ref() is not None, out

    layer.train()
    if precision == "int8":
        held, _ = kept(layer)  # bitsandbytes' own CPU training forward
        assert held
    kernels.pin_dequantized(layer)
    held, out = kept(layer)
    assert not held
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
