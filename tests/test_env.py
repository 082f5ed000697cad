import copy
import json

import pandas as pd
import pytest

from tinyrlhf import env
from tinyrlhf.config import get_paths, get_profile

GiB = 1024**3

CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma f16c avx512f avx512_bf16 amx_tile
"""


@pytest.fixture(scope="module")
def report():
    return env.environment_report()


def good_report() -> dict:
    """A report for a machine where the cpu profile has nothing to complain about."""
    return {
        "python": {"version": "3.11.9", "executable": "/usr/bin/python3"},
        "packages": dict(env.PINS, python="3.11.9", torch="2.13.0+cpu", jupyterlab="4.6.6", nbmake="1.5.5"),
        "torch": {"version": "2.13.0+cpu", "cuda": None, "cudnn": None},
        "cuda": {"available": False, "devices": []},
        "cpu": {"model": "AMD EPYC", "logical_cores": 2, "physical_cores": 1, "flags": ["avx", "avx2"],
                "torch_capability": "AVX2", "bf16_usable": False, "bf16_reason": "no bf16 flags"},
        "bitsandbytes": {"version": "0.50.2", "backend": "cpu", "library": "/x/libbitsandbytes_cpu.so",
                         "library_error": None, "import_error": None},
        "memory": {"ram_total_bytes": 16 * GiB, "ram_available_bytes": 8 * GiB},
        "disk": {"path": "/work", "free_bytes": 50 * GiB, "total_bytes": 100 * GiB},
        "profile": {"name": "cpu", "reason": "no CUDA device and TINYRLHF_PROFILE is not set"},
        "env": {"TINYRLHF_WORKDIR": {"value": None, "exists": False},
                "TINYRLHF_HH_DIR": {"value": None, "exists": False}},
        "hub": {"HF_HUB_OFFLINE": "1", "offline": True, "cache_dir": "/root/.cache/huggingface/hub",
                "cache_exists": False},
    }


def test_report_has_documented_keys_and_types(report):
    assert set(report) == {"python", "packages", "torch", "cuda", "cpu", "bitsandbytes", "memory", "disk",
                           "profile", "env", "hub"}
    assert report["python"]["version"].startswith("3.")
    for pkg in ("torch", "trl", "peft", "bitsandbytes", "jupyterlab", "nbmake"):
        assert pkg in report["packages"]
    assert report["torch"]["version"].startswith("2.")
    import torch

    assert report["cuda"]["available"] == torch.cuda.is_available()
    assert len(report["cuda"]["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    cpu = report["cpu"]
    assert cpu["logical_cores"] >= 1 and isinstance(cpu["flags"], list)
    assert set(cpu["flags"]) <= set(env.CPU_FLAGS_OF_INTEREST)
    assert isinstance(cpu["bf16_usable"], bool) and cpu["bf16_reason"]
    assert cpu["bf16_usable"] == any(f in cpu["flags"] for f in env.BF16_CPU_FLAGS)
    bnb = report["bitsandbytes"]
    assert bnb["import_error"] is None and bnb["backend"] == "cpu"
    assert bnb["library"].endswith(("libbitsandbytes_cpu.so", "libbitsandbytes_cpu.dylib"))
    assert report["memory"]["ram_total_bytes"] >= report["memory"]["ram_available_bytes"] > 0
    assert report["disk"]["free_bytes"] > 0
    assert report["profile"]["name"] and report["profile"]["reason"]
    assert set(report["env"]) == {"TINYRLHF_WORKDIR", "TINYRLHF_HH_DIR"}
    assert isinstance(report["hub"]["cache_exists"], bool)
    json.dumps(report)  # JSON-ready as is


def test_report_table_is_two_readable_columns(report):
    table = env.report_table(report)
    assert isinstance(table, pd.DataFrame) and list(table.columns) == ["item", "value"]
    values = dict(zip(table["item"], table["value"]))
    assert values["CUDA devices"] == "none"
    assert values["RAM"].endswith("GiB available") and " GiB total" in values["RAM"]


def test_parse_cpuinfo_finds_model_and_bf16_flags():
    model, flags = env.parse_cpuinfo(CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert "avx512_bf16" in flags and "amx_tile" in flags and "amx_bf16" not in flags
    assert env.parse_cpuinfo("processor: 0\nFeatures: fp asimd bf16\n") == (None, frozenset({"fp", "asimd", "bf16"}))
    assert env.parse_cpuinfo("") == (None, frozenset())


def test_problems_empty_for_a_good_report():
    assert env.problems(good_report(), get_profile("cpu")) == []


def test_problems_flag_wrong_trl_and_gpu_profile_without_cuda():
    r = good_report()
    r["packages"]["trl"] = "1.13.0"
    found = env.problems(r, get_profile("rtx4060"))
    whats = " | ".join(p["what"] for p in found)
    assert "rtx4060" in whats and "trl 1.13.0" in whats
    fixes = " | ".join(p["fix"] for p in found)
    assert "TINYRLHF_PROFILE=cpu" in fixes and "pip install trl==1.12.0" in fixes
    assert all(set(p) == {"what", "why", "fix"} for p in found)


def test_problems_flag_resources_env_and_bitsandbytes():
    r = good_report()
    r["disk"]["free_bytes"] = GiB
    r["memory"]["ram_total_bytes"] = 2 * GiB
    r["env"]["TINYRLHF_HH_DIR"] = {"value": "/nowhere/hh", "exists": False}
    r["bitsandbytes"]["import_error"] = "OSError: libcudart.so: cannot open"
    r["packages"]["torch"] = "2.12.0"
    fixes = [p["fix"] for p in env.problems(r, "cpu")]
    assert len(fixes) == 5
    assert "pip install bitsandbytes==0.50.2" in fixes
    # torch is pinned but never pip-installed from here: the fix points at the right wheel
    assert any("torch 2.13.0" in f for f in fixes)


def test_write_environment_writes_json_atomically(tmp_path):
    paths = get_paths(tmp_path / "work")
    profile = get_profile("cpu")
    r = copy.deepcopy(good_report())
    out = env.write_environment(r, paths, profile, verdicts=[{"stage": "sft", "fits": True}])
    assert out == paths.results / "environment.json"
    assert paths.data.is_dir() and paths.models.is_dir() and paths.figures.is_dir()
    saved = json.loads(out.read_text())
    assert saved["report"] == r and saved["problems"] == []
    assert saved["memory_verdicts"] == [{"stage": "sft", "fits": True}]
    assert saved["manifest"]["stage"] == "environment" and saved["manifest"]["profile"] == "cpu"
    assert [p.name for p in paths.results.iterdir() if p.is_file()] == ["environment.json"]  # no temp files left


def test_install_missing_lists_only_wrong_versions(monkeypatch):
    installed = dict(env.PINS)
    monkeypatch.setattr(env, "_installed_version", lambda name: installed.get(name))
    assert env.install_missing(dry_run=True) == []

    installed["trl"] = "1.13.0"
    installed["peft"] = None  # not installed
    ran = []
    monkeypatch.setattr(env.subprocess, "run", lambda *a, **k: ran.append(a))
    (cmd,) = env.install_missing(dry_run=True)
    assert "-m pip install" in cmd and "trl==1.12.0" in cmd and "peft==0.21.2" in cmd
    assert "transformers" not in cmd and "torch" not in cmd
    assert ran == []  # a dry run runs nothing
