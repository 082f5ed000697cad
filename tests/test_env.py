import copy
import json

import pandas as pd
import pytest

from tinyrlhf import env
from tinyrlhf import nvidia as probe
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


DRIVER_FILE_TEXT = """\
NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build  (dvs-builder@U16-I3-B03-4-3)
GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)
"""
NO_NVIDIA = {"present": False, "driver_version": None, "driver_file": None, "device_files": [], "smi": None,
             "smi_gpus": [], "smi_error": None, "CUDA_VISIBLE_DEVICES": None}


def fake_nvidia(monkeypatch, tmp_path, driver=True, devices=("nvidia0",), smi=None):
    """Point the probe at a fake /proc driver file and /dev device files under tmp_path (smi: nvidia-smi's path)."""
    driver_file = tmp_path / "proc-driver-nvidia-version"
    if driver:
        driver_file.write_text(DRIVER_FILE_TEXT)
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    for name in (*devices, "nvidiactl", "nvidia-uvm"):  # the control files are no device: the glob skips them
        (dev / name).touch()
    monkeypatch.setattr(probe, "NVIDIA_DRIVER_FILE", driver_file)
    monkeypatch.setattr(probe, "NVIDIA_DEVICE_GLOB", str(dev / "nvidia[0-9]*"))
    monkeypatch.setattr(env.shutil, "which", lambda cmd: smi if cmd == probe.NVIDIA_SMI else None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def card_but_no_cuda(torch_cuda) -> dict:
    """good_report() on a machine with an NVIDIA driver and /dev/nvidia0 that torch (built for torch_cuda) can't use."""
    r = good_report()
    r["torch"]["cuda"] = torch_cuda
    r["cuda"]["nvidia"] = dict(NO_NVIDIA, present=True, driver_version="550.54.14",
                               driver_file="/proc/driver/nvidia/version", device_files=["/dev/nvidia0"])
    return r


@pytest.fixture(scope="module")
def report():
    return env.environment_report()


def good_report() -> dict:
    """A report for a machine where the cpu profile has nothing to complain about."""
    return {
        "python": {"version": "3.11.9", "executable": "/usr/bin/python3"},
        "packages": dict(env.PINS, python="3.11.9", torch="2.13.0+cpu", jupyterlab="4.6.6", nbmake="1.5.5"),
        "torch": {"version": "2.13.0+cpu", "cuda": None, "cudnn": None},
        "cuda": {"available": False, "devices": [], "nvidia": dict(NO_NVIDIA), "torch_error": None},
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
    nvidia = report["cuda"]["nvidia"]
    assert set(nvidia) == set(NO_NVIDIA)
    assert nvidia["present"] == bool(probe.NVIDIA_DRIVER_FILE.exists() or nvidia["device_files"] or nvidia["smi"])
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


def test_nvidia_presence_reads_driver_file_devices_and_smi(monkeypatch, tmp_path):
    fake_nvidia(monkeypatch, tmp_path, devices=("nvidia0", "nvidia1"), smi="/usr/bin/nvidia-smi")
    ran = []

    def fake_run(argv, **kw):
        ran.append(argv)
        assert kw["timeout"] <= 10  # a hung driver must not hang the report
        return env.subprocess.CompletedProcess(argv, 0, stdout="NVIDIA GeForce RTX 4060, 550.54.14\n")

    monkeypatch.setattr(env.subprocess, "run", fake_run)
    found = env.nvidia_presence()
    assert found["present"] and found["driver_version"] == "550.54.14"
    assert found["driver_file"] == str(probe.NVIDIA_DRIVER_FILE)
    assert [p.rsplit("/", 1)[1] for p in found["device_files"]] == ["nvidia0", "nvidia1"]
    assert found["smi_gpus"] == [{"name": "NVIDIA GeForce RTX 4060", "driver_version": "550.54.14"}]
    assert ran[0][0] == "/usr/bin/nvidia-smi" and "--query-gpu=name,driver_version" in ran[0]

    ran.clear()
    assert env.nvidia_presence(query_smi=False)["smi_gpus"] == [] and ran == []  # the cheap probe runs nothing


def test_nvidia_presence_survives_a_failing_smi_and_finds_nothing_on_a_bare_machine(monkeypatch, tmp_path):
    fake_nvidia(monkeypatch, tmp_path, driver=False, devices=(), smi="/usr/bin/nvidia-smi")

    def failing(argv, **kw):
        raise env.subprocess.CalledProcessError(9, argv, output="NVIDIA-SMI has failed because it couldn't "
                                                "communicate with the NVIDIA driver.\nMake sure ...")

    monkeypatch.setattr(env.subprocess, "run", failing)
    found = env.nvidia_presence()
    assert found["present"] and found["driver_version"] is None and found["smi_gpus"] == []
    assert found["smi_error"].startswith("NVIDIA-SMI has failed") and "Make sure" not in found["smi_error"]

    def hung(argv, **kw):
        raise env.subprocess.TimeoutExpired(argv, kw["timeout"])

    monkeypatch.setattr(env.subprocess, "run", hung)
    assert "TimeoutExpired" in env.nvidia_presence()["smi_error"]

    monkeypatch.setattr(env.shutil, "which", lambda cmd: None)
    assert env.nvidia_presence() == NO_NVIDIA  # no nvidia-smi is never run


@pytest.mark.parametrize("profile", ["cpu", "rtx4060"])
def test_problems_say_loudly_a_cpu_only_torch_cannot_use_the_card(profile):
    found = env.problems(card_but_no_cuda(torch_cuda=None), get_profile(profile))
    card = found[0]  # first: it explains the other problems
    assert card["what"] == "an NVIDIA GPU/driver is present but torch cannot use it"
    assert "CPU-only build" in card["why"] and "torch 2.13.0+cpu" in card["why"]
    assert "550.54.14" in card["why"] and "/dev/nvidia0" in card["why"]
    assert "fell back to `cpu`" in card["why"]
    assert card["fix"].startswith("install a CUDA build of torch: pip install --force-reinstall torch==2.13.0 "
                                  "--index-url https://download.pytorch.org/whl/cu1")
    assert 'python -c "import torch; print(torch.cuda.is_available())"' in card["fix"]
    assert "update the NVIDIA driver" not in card["fix"]


def test_problems_blame_the_driver_for_a_cuda_build_that_sees_no_card():
    r = card_but_no_cuda(torch_cuda="12.8")
    r["torch"]["version"] = r["packages"]["torch"] = "2.13.0+cu128"
    r["cuda"]["torch_error"] = "The NVIDIA driver on your system is too old (found version 12020)."
    (card,) = env.problems(r, get_profile("cpu"))
    assert "CUDA 12.8" in card["why"] and "newer NVIDIA driver than the one found (550.54.14)" in card["why"]
    assert "CPU-only" not in card["why"] and "torch says: The NVIDIA driver on your system is too old" in card["why"]
    assert card["fix"].startswith("update the NVIDIA driver") and "torch==2.13.0 --index-url" in card["fix"]

    r["cuda"]["nvidia"]["CUDA_VISIBLE_DEVICES"] = ""
    (card,) = env.problems(r, get_profile("cpu"))
    assert "CUDA_VISIBLE_DEVICES=''" in card["why"] and card["fix"].startswith("unset CUDA_VISIBLE_DEVICES")


def test_no_card_problem_without_nvidia_or_with_cuda_working():
    assert env.problems(good_report(), get_profile("cpu")) == []
    r = card_but_no_cuda(torch_cuda="12.8")
    r["cuda"]["available"] = True
    assert not any("NVIDIA" in p["what"] for p in env.problems(r, get_profile("cpu")))


def test_report_carries_the_probe_and_torchs_own_reason(monkeypatch, tmp_path):
    import torch

    fake_nvidia(monkeypatch, tmp_path)
    monkeypatch.setattr(env, "cuda_devices", lambda: [])

    def too_old():
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 12020).\n  Please update")

    monkeypatch.setattr(torch.cuda, "init", too_old)
    r = env.environment_report(get_paths(tmp_path / "work"))
    assert r["cuda"]["nvidia"]["present"] and r["cuda"]["nvidia"]["driver_version"] == "550.54.14"
    # one line, whitespace collapsed: it is shown in a table cell
    assert r["cuda"]["torch_error"] == (
        "The NVIDIA driver on your system is too old (found version 12020). Please update")
    table = env.report_table(r)
    assert dict(zip(table["item"], table["value"]))["NVIDIA driver (OS)"].startswith("driver 550.54.14 in ")
    json.dumps(r)

    bare = tmp_path / "bare"
    bare.mkdir()
    fake_nvidia(monkeypatch, bare, driver=False, devices=())
    assert env.environment_report(get_paths(tmp_path / "work"))["cuda"]["torch_error"] is None  # not asked


def test_default_profile_reason_names_the_unusable_driver(monkeypatch, tmp_path):
    from tinyrlhf import config

    monkeypatch.delenv("TINYRLHF_PROFILE", raising=False)
    monkeypatch.setattr(config, "cuda_available", lambda: False)
    monkeypatch.setattr(env.subprocess, "run", lambda *a, **k: pytest.fail("the default profile must not run"))
    fake_nvidia(monkeypatch, tmp_path, devices=())
    name, why = config.default_profile_name()
    assert name == "cpu"
    assert "no CUDA device usable by torch although an NVIDIA driver is present" in why and "00_Setup" in why

    monkeypatch.setattr(probe, "NVIDIA_DRIVER_FILE", tmp_path / "absent")
    assert config.default_profile_name() == ("cpu", "no CUDA device and TINYRLHF_PROFILE is not set")
