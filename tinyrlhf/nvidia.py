"""What the OS shows of an NVIDIA driver and its devices, whatever torch can see: no package imports, so the
profile's default (config) and the environment report (env) both ask it."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

# Where the OS shows an NVIDIA driver and its devices whatever torch can see (module-level: tests fake them).
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")
NVIDIA_DEVICE_GLOB = "/dev/nvidia[0-9]*"
NVIDIA_SMI = "nvidia-smi"
NVIDIA_SMI_TIMEOUT_S = 5


def _driver_version(text: str) -> str | None:
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 ..." (or "... Open Kernel Module for
    # x86_64  570.86.15 ..."): the version is the first dotted number of the NVRM line.
    nvrm = next((line for line in text.splitlines() if line.startswith("NVRM")), "")
    found = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", nvrm + " ")
    return found.group(1) if found else None


def nvidia_presence(query_smi: bool = True) -> dict:
    """What the OS shows of an NVIDIA driver and devices, independent of torch: the kernel driver's version file,
    the /dev/nvidia<N> device files, and nvidia-smi (asked for the GPUs only when on PATH and `query_smi`; any
    failure is kept as text, never raised). `present` is True when any of them is there."""
    try:
        driver_text = NVIDIA_DRIVER_FILE.read_text(errors="replace")
    except OSError:  # no Linux NVIDIA kernel module (or not Linux, or WSL: nvidia-smi is the only sign there)
        driver_text = None
    smi = shutil.which(NVIDIA_SMI)
    gpus, smi_error = [], None
    if smi and query_smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True).stdout
            for line in out.splitlines():
                name, _, version = line.rpartition(",")
                if name.strip():
                    gpus.append({"name": name.strip(), "driver_version": version.strip() or None})
        except subprocess.CalledProcessError as e:  # e.g. "couldn't communicate with the NVIDIA driver"
            said = (e.stdout or e.stderr or "").strip()
            smi_error = said.splitlines()[0] if said else f"exit status {e.returncode}"
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            smi_error = f"{type(e).__name__}: {e}"
    driver = _driver_version(driver_text) if driver_text else None
    driver = driver or next((g["driver_version"] for g in gpus if g["driver_version"]), None)
    devices = sorted(glob.glob(NVIDIA_DEVICE_GLOB))
    return {"present": bool(driver_text is not None or devices or smi), "driver_version": driver,
            "driver_file": str(NVIDIA_DRIVER_FILE) if driver_text is not None else None, "device_files": devices,
            "smi": smi, "smi_gpus": gpus, "smi_error": smi_error,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
