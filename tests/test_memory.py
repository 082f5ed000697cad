"""Memory estimator: hand-computed arithmetic, monotonicity, PPO placement rules, verdicts, profiles."""

import dataclasses
import math
from pathlib import Path

import pytest

from tinyrlhf import config
from tinyrlhf import memory as m
from tinyrlhf.config import get_profile

GiB = m.GiB

# Round numbers so every part can be computed by hand: a Llama-style model without biases or GQA.
# Per layer: attention 4 * 64*64 = 16384, MLP 3 * 64*128 = 24576, two RMSNorms 128 -> 41088.
# Total: 2 layers * 41088 + embedding 1000*64 + final norm 64 = 146240 (tied LM head).
TOY = m.ModelSpec("toy", n_layer=2, hidden=64, n_head=4, vocab=1000, intermediate=128, arch="llama")
TOY_PARAMS = 146240
TOY_LINEAR = 2 * 40960  # quantizable matrix weights
TOY_OTHER = TOY_PARAMS - TOY_LINEAR  # embedding and norms stay bf16


def test_toy_parameter_count():
    assert TOY.n_params == TOY_PARAMS


def test_weight_bytes_by_precision():
    assert m.weight_bytes(TOY, "fp32") == 4 * TOY_PARAMS
    assert m.weight_bytes(TOY, "bf16") == 2 * TOY_PARAMS
    # int8: 1 byte per weight + fp32 scale per output row (q,k,v,o 64 rows, gate/up 128, down 64 = 576 per layer)
    assert m.weight_bytes(TOY, "int8") == TOY_LINEAR + 4 * 2 * 576 + 2 * TOY_OTHER
    # nf4: half a byte per weight; 640 blocks of 64 per layer with an fp32 absmax each...
    assert m.weight_bytes(TOY, "int4", double_quant=False) == TOY_LINEAR // 2 + 4 * 1280 + 2 * TOY_OTHER
    # ...or, double quantized, an 8-bit absmax per block plus one fp32 scale per matrix (each has < 256 blocks)
    assert m.weight_bytes(TOY, "nf4") == TOY_LINEAR // 2 + 1280 + 4 * 14 + 2 * TOY_OTHER


def test_matrix_bytes_match_bitsandbytes_storage():
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import quantize_4bit

    d_in, d_out = 64, 600  # 600 blocks of 64: the double-quant second level needs 3 scales
    w = torch.randn(d_out, d_in, dtype=torch.bfloat16)

    def size(t):
        return t.numel() * t.element_size()

    for dq in (False, True):
        q, st = quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
        stored = size(q) + size(st.absmax) + (size(st.state2.absmax) if dq else 0)
        assert m.matrix_bytes(d_in, d_out, "int4", double_quant=dq) == stored
    int8 = bnb.nn.Int8Params(w.float(), requires_grad=False, has_fp16_weights=False).to("cpu")
    assert m.matrix_bytes(d_in, d_out, "int8") == size(int8) + size(int8.SCB)


def test_quantized_weights_are_ordered():
    for spec in (TOY, m.KNOWN_MODELS["Qwen/Qwen2.5-0.5B"], m.KNOWN_MODELS["gpt2"]):
        sizes = [m.weight_bytes(spec, p) for p in ("int4", "int8", "bf16", "fp32")]
        assert sizes == sorted(sizes) and len(set(sizes)) == 4
    rms = [m.estimate_rm(TOY, precision=p, batch=2, seq_len=16).device_bytes for p in ("int4", "int8", "bf16")]
    assert rms[0] < rms[1] < rms[2]


def test_sft_lora_parts_by_hand():
    est = m.estimate_sft(TOY, precision="bf16", lora_r=8, batch=2, seq_len=10, target_modules=("q_proj", "v_proj"),
                         eval_batch=1, sample_rows=0)  # the training phase is the peak
    lora = 2 * 2 * 8 * (64 + 64)  # layers * matrices * r * (d_in + d_out)
    assert m.lora_params(TOY, 8, ("q_proj", "v_proj")) == lora == 4096
    p = est.parts
    assert p["weights"] == 2 * TOY_PARAMS
    assert p["trainable weights (fp32 adapters)"] == 4 * lora
    assert p["gradients"] == 4 * lora
    assert p["optimizer state (AdamW)"] == 8 * lora
    # per token per layer: 11h + 5*a*s + 3h + 8*I (gated MLP) + 4h = 704 + 200 + 192 + 1024 + 256
    assert p["activations"] == 2 * 10 * 2 * 2376
    assert p["logits"] == 2 * 10 * 1000 * 8
    dynamic = sum(v for k, v in p.items() if not k.startswith(("fragmentation", "CUDA", "cpu: ")))
    assert p["fragmentation (10%)"] == math.ceil(0.1 * dynamic)
    assert est.device_bytes == dynamic + p["fragmentation (10%)"] + m.CUDA_CONTEXT
    assert est.cpu_bytes == m.HOST_BASELINE["cuda"]
    assert est.total == sum(p.values()) == est.device_bytes + est.cpu_bytes


def test_full_finetuning_is_16_bytes_per_parameter():
    est = m.estimate_sft(TOY, precision="bf16", lora_r=None, batch=1, seq_len=8)
    p = est.parts
    assert (p["weights"], p["gradients"], p["optimizer state (AdamW)"]) == (2 * TOY_PARAMS, 2 * TOY_PARAMS,
                                                                              12 * TOY_PARAMS)
    fp32 = m.estimate_sft(TOY, precision="fp32", lora_r=None, batch=1, seq_len=8).parts
    assert fp32["weights"] + fp32["gradients"] + fp32["optimizer state (AdamW)"] == 16 * TOY_PARAMS
    with pytest.raises(ValueError, match="LoRA"):
        m.estimate_sft(TOY, precision="int4", lora_r=None, batch=1, seq_len=8)


def test_gradient_checkpointing_keeps_layer_inputs_only():
    full = m.activation_bytes(TOY, 2, 10)
    ckpt = m.activation_bytes(TOY, 2, 10, gradient_checkpointing=True)
    assert ckpt == 2 * 10 * (2 * 64 * 2 + 2376) < full


def test_lora_params_match_peft():
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cases = [
        (GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16)),
         ("c_attn", "c_proj", "c_fc")),
        (Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, vocab_size=50,
                                      tie_word_embeddings=True)),
         ("q_proj", "k_proj", "v_proj", "o_proj")),
    ]
    for model, targets in cases:
        spec = m.ModelSpec.from_config(model.config)
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=list(targets)))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert m.lora_params(spec, 4, targets) == trainable


def test_from_config_matches_instantiated_models():
    pytest.importorskip("torch")
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    configs = [
        (GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=24), GPT2LMHeadModel),
        (GPT2Config(n_layer=1, n_embd=32, n_head=2, n_inner=80, vocab_size=90, n_positions=8), GPT2LMHeadModel),
        (Qwen2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=48, vocab_size=100, tie_word_embeddings=True), Qwen2ForCausalLM),
        (LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                     intermediate_size=40, vocab_size=70, tie_word_embeddings=False, attention_bias=True,
                     mlp_bias=True), LlamaForCausalLM),
    ]
    for cfg, cls in configs:
        model = cls(cfg)
        assert m.ModelSpec.from_config(cfg).n_params == sum(p.numel() for p in model.parameters()), cls.__name__


def test_known_models_have_published_sizes():
    sizes = {name: spec.n_params for name, spec in m.KNOWN_MODELS.items()}
    assert sizes["gpt2"] == 124_439_808
    assert sizes["gpt2-medium"] == 354_823_168
    assert sizes["gpt2-large"] == 774_030_080
    assert sizes["gpt2-xl"] == 1_557_611_200
    assert sizes["Qwen/Qwen2.5-0.5B"] == 494_032_768
    assert m.known_spec("openai-community/gpt2") is m.KNOWN_MODELS["gpt2"]


def _stage_estimators():
    """Each stage as f(spec, batch, seq) -> Estimate; PPO scales rollouts and training batch together."""
    return {
        "sft": lambda s, b, n: m.estimate_sft(s, lora_r=8, batch=b, seq_len=n, eval_batch=b, sample_rows=b),
        "sft_full": lambda s, b, n: m.estimate_sft(s, lora_r=None, batch=b, seq_len=n, eval_batch=b, sample_rows=b),
        "rm_int4": lambda s, b, n: m.estimate_rm(s, precision="int4", lora_r=8, batch=b, seq_len=n,
                                                 gradient_checkpointing=True),
        "ppo": lambda s, b, n: m.estimate_ppo(s, rm_precision="int8", batch=4 * b, mini_batch=b, query_len=n,
                                              response_len=n // 2, lora_r=8),
        "ppo_cpu": lambda s, b, n: m.estimate_ppo(s, batch=4 * b, mini_batch=b, query_len=n, response_len=n // 2,
                                                  lora_r=8, device="cpu", policy_precision="fp32"),
    }


@pytest.mark.parametrize("stage", list(_stage_estimators()))
def test_every_stage_is_monotone(stage):
    f = _stage_estimators()[stage]
    bigger = dataclasses.replace(TOY, n_layer=4)
    wider = dataclasses.replace(TOY, hidden=128, intermediate=256)
    base = f(TOY, 2, 32).total
    assert f(bigger, 2, 32).total > base
    assert f(wider, 2, 32).total > base
    assert f(TOY, 4, 32).total > base
    assert f(TOY, 2, 64).total > base


def test_ppo_phases_are_monotone_separately():
    kw = dict(query_len=32, response_len=16, lora_r=8)
    base = m.estimate_ppo(TOY, batch=8, mini_batch=2, **kw).device_bytes
    assert m.estimate_ppo(TOY, batch=16, mini_batch=2, **kw).device_bytes >= base
    assert m.estimate_ppo(TOY, batch=8, mini_batch=4, **kw).device_bytes >= base


def test_reference_is_free_only_as_the_disabled_adapter():
    kw = dict(batch=8, mini_batch=2, query_len=32, response_len=16, lora_r=8)
    shared = m.estimate_ppo(TOY, ref_is_disabled_adapter=True, **kw)
    copy = m.estimate_ppo(TOY, ref_is_disabled_adapter=False, **kw)
    assert shared.parts["reference model"] == 0
    assert copy.parts["reference model"] == copy.parts["policy weights"] == 2 * TOY_PARAMS
    assert copy.device_bytes - shared.device_bytes >= 2 * TOY_PARAMS


def test_reward_model_on_cpu_is_host_memory():
    kw = dict(rm_precision="int4", batch=8, mini_batch=2, query_len=32, response_len=16, lora_r=8)
    on_cpu = m.estimate_ppo(TOY, rm_on_cpu=True, **kw)
    on_gpu = m.estimate_ppo(TOY, rm_on_cpu=False, **kw)
    rm_weights = m.weight_bytes(TOY, "int4") + 4 * TOY.hidden  # + fp32 score head
    assert on_cpu.parts["cpu: reward model weights"] == rm_weights
    assert "reward model weights" not in on_cpu.parts
    assert on_cpu.cpu_bytes > m.HOST_BASELINE["cuda"] + rm_weights
    assert on_gpu.parts["reward model weights"] == rm_weights and on_gpu.cpu_bytes == m.HOST_BASELINE["cuda"]
    assert on_gpu.device_bytes > on_cpu.device_bytes


def test_value_model_follows_the_reward_model_precision():
    kw = dict(rm_precision="int4", batch=8, mini_batch=2, query_len=32, response_len=16, lora_r=8)
    assert m.estimate_ppo(TOY, value_from_rm=True, **kw).parts["value model backbone"] == m.weight_bytes(TOY, "int4")
    assert m.estimate_ppo(TOY, value_from_rm=False, **kw).parts["value model backbone"] == 2 * TOY_PARAMS


def test_fit_verdict_thresholds():
    assert m.fits(850, 1000)[0] == "fits"
    assert m.fits(851, 1000)[0] == "tight"
    assert m.fits(1000, 1000)[0] == "tight"
    assert m.fits(1001, 1000)[0] == "will not fit"
    assert m.fits(900, 1000, tight_margin=0.95)[0] == "fits"
    verdict, reason = m.fits(int(5.1 * GiB), 8 * GiB)
    assert verdict == "fits" and reason == "needs 5.1 GiB of 8.0 GiB"
    est = m.estimate_sft(TOY, batch=1, seq_len=8)
    assert m.fits(est, est.device_bytes)[0] == "tight"  # an Estimate is judged by its device bytes
    assert m.fits(est, est.device_bytes - 1)[0] == "will not fit"


def test_stage_verdicts_and_card_fits():
    rtx = config.PROFILES["rtx4060"]
    stages = ["sft", "rm_bf16", "rm_int8", "rm_int4", "ppo_bf16", "ppo_int8", "ppo_int4"]
    rows = m.stage_verdicts(rtx, gpu_bytes=8 * GiB, ram_bytes=32 * GiB)
    assert [r["stage"] for r in rows] == stages
    for r in rows:
        assert set(r) == {"stage", "device", "estimate_bytes", "capacity_bytes", "verdict", "reason"}
        assert r["device"] == "cuda" and r["capacity_bytes"] == 8 * GiB and r["verdict"] in m.VERDICTS
        assert "of 8.0 GiB" in r["reason"]
    huge = m.stage_verdicts(rtx, gpu_bytes=1000 * GiB, ram_bytes=1000 * GiB)
    assert {r["verdict"] for r in huge} == {"fits"}
    cpu_rows = m.stage_verdicts(config.PROFILES["cpu"], gpu_bytes=None, ram_bytes=4 * GiB)
    assert {(r["device"], r["capacity_bytes"], r["verdict"]) for r in cpu_rows} == {("cpu", 4 * GiB, "fits")}
    tiny_ram = m.stage_verdicts(config.PROFILES["cpu"], gpu_bytes=None, ram_bytes=GiB // 2)
    assert {r["verdict"] for r in tiny_ram} == {"will not fit"}  # the process baseline alone is 1 GiB
    assert m.card_fits(config.PROFILES["cpu"], 2)
    assert not m.card_fits(config.PROFILES["cpu"], 0.25)  # the CUDA context alone is 0.5 GiB
    assert m.card_fits(rtx, 1000) and not m.card_fits(rtx, 1)


def test_estimate_profile_for_every_profile():
    for name, profile in config.PROFILES.items():
        ests = m.estimate_profile(profile)
        assert list(ests) == ["sft"] + [f"{s}_{p}" for s in ("rm", "ppo") for p in profile.rm.precisions]
        for stage, est in ests.items():
            assert est.stage == stage and est.device_bytes > 0 and est.total == sum(est.parts.values())
            assert stage in est.breakdown()
        device = "cpu" if name == "cpu" else "cuda"
        assert {e.device for e in ests.values()} == {device}
        assert ("CUDA context and allocator" in ests["sft"].parts) == (device == "cuda")
    real = config.PROFILES["rtx4060"]
    weights, mapped = "cpu: reward model weights", "cpu: " + m.MAPPED_CHECKPOINT
    head = 4 * m.known_spec("Qwen/Qwen2.5-0.5B").hidden
    rtx = m.estimate_profile(real, host_compute="bf16")  # a host with native bf16: what follows holds on any
    bnb = m.estimate_profile(dataclasses.replace(real, rm=dataclasses.replace(real.rm, cpu_kernel="bitsandbytes")),
                             host_compute="bf16")
    # on a host without native bf16 the reward model computes in float32: a bf16 model is held in float32 there
    fp32_host = m.estimate_profile(real, host_compute="fp32")["ppo_bf16"].parts[weights]
    assert fp32_host - head == 2 * (rtx["ppo_bf16"].parts[weights] - head)
    assert bnb["ppo_int4"].parts[weights] < bnb["ppo_bf16"].parts[weights]  # the reward model sits on the host
    assert rtx["ppo_int4"].parts[weights] > bnb["ppo_int4"].parts[weights]  # its dense copy costs host memory
    # a quantized reward model keeps the pages of its dense checkpoint mapped (bf16 on a GPU profile); bf16 does not
    assert mapped not in rtx["ppo_bf16"].parts and bnb["ppo_int4"].parts[mapped] > bnb["ppo_int4"].parts[weights]


def test_cpu_profile_spec_is_built_from_the_profile():
    profile = config.PROFILES["cpu"]
    spec = m.spec_for_profile(profile)
    b = profile.base
    assert (spec.n_layer, spec.hidden, spec.n_head, spec.n_kv_head, spec.vocab, spec.intermediate) == (
        b.num_layers, b.hidden_size, b.num_heads, b.num_kv_heads, b.vocab_size, b.intermediate_size)
    assert spec.arch == "llama" and spec.tie_embeddings  # a Qwen2, as base_model.scratch_config builds it


def test_unknown_model_error_says_what_to_do():
    profile = config.get_profile("rtx4060", base__model="someone/unknown-7b")
    with pytest.raises(m.UnknownModelError) as err:
        m.estimate_profile(profile)
    msg = str(err.value)
    assert "someone/unknown-7b" in msg and "gpt2-xl" in msg and "Qwen/Qwen2.5-0.5B" in msg and "ModelSpec" in msg
    # an explicit spec works, with the profile's q_proj/... targets mapped to GPT-2's names
    assert m.estimate_profile(profile, spec=m.KNOWN_MODELS["gpt2"])["sft"].device_bytes > 0


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="q_proj"):
        m.lora_params(TOY, 8, ("c_attn",))
    with pytest.raises(ValueError, match="allowed"):
        m.weight_bytes(TOY, "int2")
    with pytest.raises(ValueError, match="arch"):
        m.ModelSpec("x", n_layer=1, hidden=8, n_head=1, vocab=4, arch="mamba")


def test_format_bytes():
    assert m.format_bytes(8 * GiB) == "8.0 GiB"
    assert m.format_bytes(512 * m.MiB) == "512.0 MiB"
    assert m.format_bytes(1536 * m.MiB) == "1.5 GiB"


def test_hardware_tables_script_writes_the_document(tmp_path):
    import importlib.util

    path = config.repo_root() / "scripts" / "hardware_tables.py"
    spec = importlib.util.spec_from_file_location("hardware_tables", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "hardware.md"
    assert script.main(["--write", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Hardware") and script.REGENERATE in text
    for row in ("| sft |", "| ppo_int4 |", "| gpt2-xl |", "| Qwen/Qwen2.5-0.5B |", "| 64 |"):
        assert row in text
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


def test_committed_hardware_tables_match_the_estimator():
    """docs/hardware.md carries tables generated from the current profiles; regenerate when this fails:
    .venv/bin/python scripts/hardware_tables.py --write docs/hardware.md"""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("hardware_tables", root / "scripts" / "hardware_tables.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert (root / "docs" / "hardware.md").read_text(encoding="utf-8") == script.render(), script.REGENERATE


def test_the_estimator_agrees_with_the_real_size_measurements():
    """docs/real-size-memory.json holds, per CPU kind, peaks measured with the Qwen2.5-0.5B architecture on CPU
    (written by benchmarks/real_size_memory.py on a CPU of that kind); the current estimator, for that kind's compute
    dtype, must stay within +-20% of every current record. A record the code has moved past says so and why."""
    import json

    from tinyrlhf.memory import validation_rows

    kinds = json.loads((config.repo_root() / "docs" / "real-size-memory.json").read_text())["kinds"]
    current = {k: r for k, r in kinds.items() if r.get("current", True)}
    assert current, "no current real-size record: run benchmarks/real_size_memory.py --write-json"
    assert all(r.get("why_not_current") for r in kinds.values() if not r.get("current", True))
    for kind, record in current.items():
        assert record["cpu"]["kind"] == kind
        rows = validation_rows(record)
        assert {r["stage"] for r in rows} == {"sft", "rm_bf16", "rm_int8", "rm_int4", "ppo_bf16", "ppo_int8",
                                              "ppo_int4"}
        assert record["settings"]["rm.precisions"] == ["bf16", "int8", "int4"]
        off = {r["stage"]: round(r["ratio"], 2) for r in rows if not 0.8 <= r["ratio"] <= 1.2}
        assert not off, (kind, off)


def test_a_reward_model_on_the_card_is_counted_on_the_card():
    """ppo.rm_device='cuda' trades the design (reward model on the CPU) for speed: the estimate moves it."""
    host = m.estimate_profile(config.PROFILES["rtx4060"])["ppo_int8"]
    card = m.estimate_profile(config.get_profile("rtx4060", ppo__rm_device="cuda"))["ppo_int8"]
    assert "reward model weights" in card.parts and "cpu: reward model weights" not in card.parts
    assert card.device_bytes > host.device_bytes and card.cpu_bytes < host.cpu_bytes
    # on the card it computes in bf16 through bitsandbytes' own layers: no dense copy there
    spec = m.known_spec("Qwen/Qwen2.5-0.5B")
    int4 = m.estimate_profile(config.get_profile("rtx4060", ppo__rm_device="cuda"))["ppo_int4"]
    assert int4.parts["reward model weights"] == m.weight_bytes(spec, "int4", lm_head=False) + 4 * spec.hidden


def test_every_evaluation_pass_is_in_the_estimate():
    """Issue 23: 02's held-out loss and sampling, and PPO's checkpoint KL and sampling, are phases of their stages'
    estimates, bounded as the code bounds them (logits of EVAL_LOGIT_ROWS positions at a time), and 00_Setup's
    verdicts include them."""
    spec = m.known_spec("Qwen/Qwen2.5-0.5B")
    sft = m.estimate_sft(spec, lora_r=16, batch=2, seq_len=513, eval_batch=16, gradient_checkpointing=True)
    evaluation = {k: v for k, v in m.evaluation_bytes(spec, rows=16, seq_len=513, act_bytes=2, sample_rows=64).items()}
    assert "evaluation" in sft.note
    full_logits = 16 * 513 * spec.vocab * (2 + 4 + 4)  # what one held-out batch made before: ~12 GB
    assert evaluation["evaluation: logits of the scored positions"] < full_logits / 20
    assert sum(evaluation.values()) < full_logits / 5
    ppo = m.estimate_ppo(spec, rm_precision="int4", batch=64, mini_batch=4, query_len=384, response_len=128,
                         rollout_chunk=8, gradient_checkpointing=True)
    assert "evaluation" in ppo.note
    bigger = m.estimate_ppo(spec, rm_precision="int4", batch=64, mini_batch=4, query_len=384, response_len=128,
                            rollout_chunk=64, gradient_checkpointing=True)
    assert bigger.total > ppo.total  # the checkpoint KL pass grows with the chunk it runs at
    verdicts = m.stage_verdicts(get_profile("rtx4060"), gpu_bytes=8 * m.GiB, ram_bytes=32 * m.GiB)
    assert {v["stage"] for v in verdicts} >= {"sft", "ppo_int4"}
