"""Environment report behind 00_Setup: what this machine has, what is missing, and how to fix it.

`environment_report()` gathers facts only (no network: the hub is never probed); `problems()` turns them into
{"what", "why", "fix"} items for a profile; `write_environment()` stores both in ``results/environment.json``.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from . import kernels, memory
from .config import Paths, Profile, default_profile_name, get_paths
from .cpu import BF16_CPU_FLAGS, cpu_kind, parse_cpuinfo  # noqa: F401 (part of this module's report API)
from .jobs import reward_threads
from .memory import format_bytes
from .nvidia import nvidia_presence
from .results import atomic_write_json, cuda_devices, manifest, package_versions
from .runtime import reward_cpu_bf16

CORE_PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate")


def pinned_versions() -> dict[str, str]:
    """The `name==version` pins of the core stack, read from the installed package's metadata (pyproject.toml
    is the one place they are written)."""
    pins = {}
    for req in metadata.requires("tinyrlhf") or ():
        name, sep, version = req.split(";")[0].strip().partition("==")
        if sep and name in CORE_PACKAGES:
            pins[name] = version.strip()
    return {p: pins[p] for p in CORE_PACKAGES if p in pins}


# The versions checked together on this stack (DESIGN.md, "Facts of this stack").
PINS = pinned_versions()
# torch is never installed from here: the right wheel depends on the platform and the CUDA version.
INSTALLABLE = tuple(p for p in PINS if p != "torch")
EXTRA_PACKAGES = ("jupyterlab", "nbmake", "peft", "trl", "psutil")
CPU_FLAGS_OF_INTEREST = ("avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "f16c",
                         "fma")
ENV_DIRS = ("TINYRLHF_WORKDIR", "TINYRLHF_HH_DIR")
MIN_FREE_DISK_BYTES = 2 * 1024**3
MIN_RAM_BYTES = 4 * 1024**3
_FIX_HINTS = {"trl": "1.12.0 is the last release with trl.experimental.ppo"}
_TRUE = ("1", "on", "yes", "true")


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _matches(installed: str | None, pinned: str) -> bool:
    # A local build tag ("2.13.0+cpu", "+cu128") is the same release.
    return installed is not None and installed.split("+")[0] == pinned


def _size(n_bytes) -> str:
    return format_bytes(n_bytes, missing="unknown")


# ----------------------------------------------------------------------------------------------- facts


def cpu_facts() -> dict:
    import psutil
    import torch

    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:  # not Linux: the flags are unknown, not absent
        model, flags = None, frozenset()
    present = [f for f in CPU_FLAGS_OF_INTEREST if f in flags]
    bf16 = [f for f in BF16_CPU_FLAGS if f in flags]
    if bf16:
        reason = f"{' and '.join(bf16)} present: bf16 matmuls run natively on this CPU"
    elif flags:
        reason = "neither avx512_bf16 nor amx_bf16: bf16 is emulated and slow on this CPU, use fp32 there"
    else:
        reason = "CPU flags unknown (no /proc/cpuinfo): assuming bf16 is not native"
    return {
        "model": model or platform.processor() or platform.machine() or None,
        "kind": cpu_kind(flags),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "flags": present,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_usable": bool(bf16),
        "bf16_reason": reason,
    }


def _bitsandbytes() -> dict:
    info = {"version": _installed_version("bitsandbytes"), "backend": None, "library": None,
            "library_error": None, "import_error": None}
    try:
        import bitsandbytes.cextension as cext
    except Exception as e:  # a broken native setup can raise anything at import
        info["import_error"] = f"{type(e).__name__}: {e}"
        return info
    info["backend"] = str(cext.BNB_BACKEND).lower()
    # vars(), not getattr: the library object answers any missing attribute with a stub function.
    state = vars(cext.lib)
    dll = state.get("_lib")
    info["library"] = getattr(dll, "_name", None) if dll is not None else None
    info["library_error"] = state.get("error_msg")  # set when bitsandbytes fell back to its error mock
    info["cpu_4bit_kernel"] = _cpu_4bit_kernel()
    return info


def _cpu_4bit_kernel() -> str:
    """Which kernel bitsandbytes 0.50 scores 4-bit layers with on this CPU (backends/cpu/ops.py). On CPUs with
    AVX512-BF16 it packs the NF4 weights for a fused bf16 kernel, fetched by the optional `kernels` package from
    the model hub (kernels-community/quantization-bitsandbytes) or else its own; elsewhere (and in training) it
    dequantizes the weights and multiplies in the compute dtype."""
    try:
        from bitsandbytes.functional import has_avx512bf16

        fused = has_avx512bf16()
    except Exception:  # no native library: bitsandbytes' own error says why, in the row above
        return "unknown (bitsandbytes did not load)"
    if not fused:
        return "dequantize + matmul (no AVX512-BF16 on this CPU; the `kernels` package would not be used)"
    kernels = _installed_version("kernels")
    if kernels is None:
        return "bitsandbytes' fused AVX512-BF16 kernel (`pip install kernels` would fetch the hub's build)"
    return f"fused AVX512-BF16 kernel from the hub via kernels {kernels} when online, else bitsandbytes' own"


def _torch_cuda_error() -> str | None:
    """torch's own reason for seeing no CUDA device ("The NVIDIA driver on your system is too old (found version
    12020)...", "Torch not compiled with CUDA enabled"): is_available() only answers False, init() says why."""
    import torch

    try:
        torch.cuda.init()
    except Exception as e:  # whatever torch raises is the diagnosis, not a failure of the report
        return " ".join(str(e).split()) or type(e).__name__
    return None


def _env_dirs() -> dict:
    out = {}
    for var in ENV_DIRS:
        value = os.environ.get(var)
        out[var] = {"value": value, "exists": bool(value) and Path(value).expanduser().exists()}
    return out


def _hf_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except Exception:  # same default as huggingface_hub
        home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
        return Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub").expanduser()


def _hub() -> dict:
    # No network probe: the report must be fast and work offline; offline mode and the cache are what matter.
    raw = os.environ.get("HF_HUB_OFFLINE")
    cache = _hf_cache_dir()
    return {"HF_HUB_OFFLINE": raw, "offline": (raw or "").strip().lower() in _TRUE,
            "cache_dir": str(cache), "cache_exists": cache.is_dir()}


def environment_report(paths: Paths | None = None) -> dict:
    """Everything 00_Setup shows about this machine, as JSON-ready data."""
    import psutil
    import torch

    paths = paths or get_paths()
    packages = package_versions() | {p: _installed_version(p) for p in EXTRA_PACKAGES}
    # The workdir may not exist yet (paths.make() runs later): measure the nearest folder that does.
    disk_at = next(p for p in (paths.root, *paths.root.parents) if p.exists())
    disk = shutil.disk_usage(disk_at)
    ram = psutil.virtual_memory()
    profile, why = default_profile_name()
    devices = cuda_devices()
    nvidia = nvidia_presence()
    # Only asked when it explains something: the card is there but torch does not see it.
    torch_error = _torch_cuda_error() if nvidia["present"] and not devices else None
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "packages": packages,
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None},
        "cuda": {"available": bool(devices), "devices": devices, "nvidia": nvidia, "torch_error": torch_error},
        "cpu": cpu_facts(),
        "bitsandbytes": _bitsandbytes(),
        "memory": {"ram_total_bytes": ram.total, "ram_available_bytes": ram.available},
        "disk": {"path": str(disk_at), "free_bytes": disk.free, "total_bytes": disk.total},
        "profile": {"name": profile, "reason": why},
        "env": _env_dirs(),
        "hub": _hub(),
    }


# -------------------------------------------------------------------------------------------- verdicts


def _nvidia_evidence(nvidia: dict) -> str:
    seen = []
    if nvidia.get("driver_file"):
        seen.append(f"driver {nvidia.get('driver_version') or '(version unknown)'} in {nvidia['driver_file']}")
    elif nvidia.get("driver_version"):
        seen.append(f"driver {nvidia['driver_version']}")
    seen += nvidia.get("device_files") or []
    gpus = [g["name"] for g in nvidia.get("smi_gpus") or ()]
    if gpus:
        seen.append(f"nvidia-smi lists {', '.join(gpus)}")
    elif nvidia.get("smi"):
        seen.append(f"{nvidia['smi']}" + (f" (failing: {nvidia['smi_error']})" if nvidia.get("smi_error") else ""))
    return ", ".join(seen)


def _hides_every_device(nvidia: dict) -> bool:
    hidden = nvidia.get("CUDA_VISIBLE_DEVICES")
    return hidden is not None and hidden.strip() in ("", "-1")


def _unusable_gpu_why(report: dict, nvidia: dict) -> str:
    built_for = report["torch"]["cuda"]
    if built_for is None:
        cause = f"torch {report['torch']['version']} is a CPU-only build (torch.version.cuda is None)"
    elif _hides_every_device(nvidia):
        cause = f"CUDA_VISIBLE_DEVICES={nvidia['CUDA_VISIBLE_DEVICES']!r} hides every device from torch"
    else:
        cause = (f"this torch build uses CUDA {built_for}, which likely needs a newer NVIDIA driver than the one "
                 f"found ({nvidia.get('driver_version') or 'version unknown'})")
    torch_says = report["cuda"].get("torch_error")
    if torch_says and built_for is not None:
        cause += f"; torch says: {torch_says}"
    return (f"the OS shows {_nvidia_evidence(nvidia)}, but torch.cuda.is_available() is False: {cause}. So the "
            "default profile fell back to `cpu` (the ~15-minute synthetic run), not the experiment on the card")


def _unusable_gpu_fix(report: dict, nvidia: dict) -> str:
    check = 'then check with: python -c "import torch; print(torch.cuda.is_available())"'
    if report["torch"]["cuda"] is not None and _hides_every_device(nvidia):
        return f"unset CUDA_VISIBLE_DEVICES (or set it to 0); {check}"
    pin = PINS.get("torch") or report["torch"]["version"].split("+")[0]
    install = (f"pip install --force-reinstall torch=={pin} --index-url https://download.pytorch.org/whl/cu1xx "
               "(cu1xx: a CUDA version your driver supports, at most the 'CUDA Version' nvidia-smi prints, e.g. cu126)")
    if report["torch"]["cuda"] is None:
        return f"install a CUDA build of torch: {install}; {check}"
    return f"update the NVIDIA driver (nvidia.com/drivers), or install a build for an older CUDA: {install}; {check}"


def problems(report: dict, profile: Profile | str) -> list[dict]:
    """What stands in the way of running `profile` here, each with why it matters and how to fix it."""
    name = getattr(profile, "name", profile)
    device = getattr(profile, "device", "auto")
    out = []

    def add(what, why, fix):
        out.append({"what": what, "why": why, "fix": fix})

    has_cuda = report["cuda"]["available"]
    nvidia = report["cuda"].get("nvidia") or {}
    if not has_cuda and nvidia.get("present"):
        # For every profile: the user most likely wanted the card, and the default fell back to cpu in silence.
        add("an NVIDIA GPU/driver is present but torch cannot use it", _unusable_gpu_why(report, nvidia),
            _unusable_gpu_fix(report, nvidia))
    if not has_cuda and (name.startswith("rtx4060") or device == "cuda"):
        add(f"profile {name!r} but no CUDA device is visible",
            "this profile is the real experiment on an 8 GB GPU; on CPU it would take days",
            "set TINYRLHF_PROFILE=cpu (or run on a machine with a CUDA GPU and a CUDA build of torch)")

    hh = report["env"]["TINYRLHF_HH_DIR"]
    if hh["value"] and not hh["exists"]:
        add(f"TINYRLHF_HH_DIR={hh['value']} does not exist",
            "01_Data_Preparation reads Anthropic's *.jsonl.gz files from there",
            "point TINYRLHF_HH_DIR at a folder laid out as helpful-base/train.jsonl.gz, ..., or unset it")

    bnb = report["bitsandbytes"]
    if bnb["import_error"]:
        add("bitsandbytes failed to import", bnb["import_error"],
            f"pip install bitsandbytes=={PINS['bitsandbytes']}")
    elif bnb["library_error"] and bnb["backend"] != "cpu":
        add(f"bitsandbytes could not load its {bnb['backend']} library", bnb["library_error"],
            f"pip install --force-reinstall bitsandbytes=={PINS['bitsandbytes']} (matching your CUDA version)")

    packages = report["packages"]
    for pkg, pinned in PINS.items():
        installed = packages.get(pkg)
        if _matches(installed, pinned):
            continue
        what = f"{pkg} {installed} installed, {pinned} expected" if installed else f"{pkg} is not installed"
        why = "the pipeline is tested with exactly these versions together"
        if pkg == "torch":
            fix = f"install torch {pinned} for your platform (pytorch.org; the CUDA build on a GPU machine)"
        else:
            fix = f"pip install {pkg}=={pinned}" + (f": {_FIX_HINTS[pkg]}" if pkg in _FIX_HINTS else "")
        add(what, why, fix)

    free = report["disk"]["free_bytes"]
    if free < MIN_FREE_DISK_BYTES:
        add(f"only {_size(free)} free at {report['disk']['path']}",
            "models, checkpoints and results need at least 2 GiB",
            "free some disk space or set TINYRLHF_WORKDIR to a folder on a larger disk")

    ram = report["memory"]["ram_total_bytes"]
    if ram < MIN_RAM_BYTES:
        add(f"only {_size(ram)} of RAM", "the reward model runs on CPU next to the policy and needs at least 4 GiB",
            "use a machine with more memory, or close other programs and lower batch sizes via TINYRLHF_OVERRIDES")
    return out


# ------------------------------------------------------------------------------------------- display


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def report_table(report: dict):
    """Two-column ("item", "value") human-readable view of a report, for the notebook."""
    import pandas as pd

    rows = [("Python", report["python"]["version"]), ("Python executable", report["python"]["executable"])]
    rows += [(f"package {k}", v or "not installed") for k, v in report["packages"].items() if k != "python"]
    t = report["torch"]
    rows.append(("torch build", f"{t['version']}, CUDA {t['cuda'] or 'none'}, cuDNN {t['cudnn'] or 'none'}"))
    devices = report["cuda"]["devices"]
    if not devices:
        rows.append(("CUDA devices", "none"))
    nvidia = report["cuda"].get("nvidia") or {}
    rows.append(("NVIDIA driver (OS)", _nvidia_evidence(nvidia) or "none found"))
    for d in devices:
        rows.append((f"GPU {d['index']}", f"{d['name']}, {_size(d['total_memory_bytes'])} total, "
                     f"{_size(d['free_memory_bytes'])} free, capability {d['capability']}, "
                     f"bf16 {_yes(d['bf16_supported'])}"))
    c = report["cpu"]
    rows += [
        ("CPU", c["model"] or "unknown"),
        ("CPU cores", f"{c['logical_cores']} logical, {c['physical_cores'] or 'unknown'} physical"),
        ("CPU flags", ", ".join(c["flags"]) or "unknown"),
        ("CPU kind", c.get("kind") or "unknown"),
        ("torch CPU capability", c["torch_capability"]),
        ("bf16 on CPU", f"{_yes(c['bf16_usable'])} ({c['bf16_reason']})"),
    ]
    b = report["bitsandbytes"]
    if b["import_error"]:
        bnb = f"import failed: {b['import_error']}"
    else:
        lib = b["library"] or f"no native library ({b['library_error']})"
        bnb = f"{b['version']}, backend {b['backend']}, {lib}"
    rows.append(("bitsandbytes", bnb))
    if b.get("cpu_4bit_kernel"):
        rows.append(("bitsandbytes 4-bit on CPU", b["cpu_4bit_kernel"]))
    m, d = report["memory"], report["disk"]
    rows += [
        ("RAM", f"{_size(m['ram_total_bytes'])} total, {_size(m['ram_available_bytes'])} available"),
        ("disk", f"{_size(d['free_bytes'])} free of {_size(d['total_bytes'])} at {d['path']}"),
        ("profile", f"{report['profile']['name']} ({report['profile']['reason']})"),
    ]
    for var, e in report["env"].items():
        rows.append((var, "not set" if not e["value"] else f"{e['value']} ({'exists' if e['exists'] else 'missing'})"))
    h = report["hub"]
    rows += [("HF_HUB_OFFLINE", h["HF_HUB_OFFLINE"] or "not set"),
             ("HF cache", f"{h['cache_dir']} ({'exists' if h['cache_exists'] else 'missing'})")]
    return pd.DataFrame(rows, columns=["item", "value"])


# ----------------------------------------------------------------------------------- actions and output


def install_missing(dry_run: bool = True) -> list[str]:
    """pip commands for the pinned packages that are missing or at another version; run them unless dry_run."""
    specs = [f"{p}=={PINS[p]}" for p in INSTALLABLE if not _matches(_installed_version(p), PINS[p])]
    if not specs:
        return []
    # One command: pip resolves the pins together instead of undoing one install with the next.
    argv = [sys.executable, "-m", "pip", "install", *specs]
    if not dry_run:
        subprocess.run(argv, check=True)
    return [shlex.join(argv)]


def capacities(report: dict) -> tuple[int | None, int]:
    """What the memory verdicts judge against, in bytes: the first CUDA device's *free* memory (a desktop card also
    drives the display, so less than its size is there for the stages) or None without one, and the total RAM."""
    devices = report["cuda"]["devices"]
    gpu = None
    if devices:
        gpu = devices[0].get("free_memory_bytes") or devices[0]["total_memory_bytes"]
    return gpu, report["memory"]["ram_total_bytes"]


def reward_scoring(report: dict, profile: Profile) -> dict:
    """How PPO's reward model scores rollouts on this machine with this profile: device, torch threads and why,
    the compute dtype, and the kernel each precision scores with and why (kernels.choose, from the CPU's flags and
    the RAM available)."""
    import torch

    policy = "cuda" if report["cuda"]["devices"] and profile.device != "cpu" else "cpu"
    p = profile.ppo
    threads = reward_threads(p.rm_threads, p.rm_device, policy, report["cpu"]["physical_cores"])
    if p.rm_device != "cpu":
        why = "on the GPU (ppo.rm_device='cuda')"
    elif p.rm_threads:
        why = f"ppo.rm_threads={p.rm_threads}"
    elif policy == "cuda":
        why = "physical cores less one: the process driving the GPU keeps a core (ppo.rm_threads=0)"
    else:
        why = "the job's torch threads: with the policy on the CPU, scoring and training take turns"
    native = report["cpu"]["bf16_usable"]
    in_bf16 = reward_cpu_bf16(profile.rm.cpu_dtype, native)
    dtype = torch.bfloat16 if in_bf16 else torch.float32
    dense = memory.linear_bytes(memory.spec_for_profile(profile), "bf16" if in_bf16 else "fp32")
    chosen = {prec: kernels.choose(prec, setting=profile.rm.cpu_kernel, compute_dtype=dtype, dense_bytes=dense,
                                   available_bytes=report["memory"]["ram_available_bytes"], native_bf16=native,
                                   int8_matmul=profile.rm.int8_cpu_matmul)
              for prec in profile.rm.precisions}
    return {"device": p.rm_device, "policy_device": policy, "threads": threads or None, "threads_reason": why,
            "cpu_kind": report["cpu"].get("kind"), "compute_dtype": kernels.dtype_name(dtype), "kernels": chosen,
            "int8_matmul": profile.rm.int8_cpu_matmul, "int4_kernel": report["bitsandbytes"].get("cpu_4bit_kernel")}


def write_environment(report: dict, paths: Paths, profile: Profile, verdicts: list | None = None) -> Path:
    """Create the artifact folders and write results/environment.json atomically."""
    paths.make()
    return atomic_write_json(paths.results / "environment.json", {
        "report": report,
        "problems": problems(report, profile),
        "memory_verdicts": list(verdicts or []),
        "reward_scoring": reward_scoring(report, profile),
        "manifest": manifest(profile, "environment"),
    })
