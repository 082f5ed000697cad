"""What the CPU can do, read from /proc/cpuinfo: its flags, whether bf16 matmuls run natively, and its kind (the
label every measurement of the project carries). No package imports: runtime, memory and env all read it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset]:
    """CPU model name and feature flags from /proc/cpuinfo text (x86 "flags", ARM "Features")."""
    model, flags = None, frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def cpu_kind(flags) -> str:
    """The kind of CPU the project's measurements are labelled with: what decides bf16 arithmetic and kernel
    speeds. "avx512-bf16" (bf16 matmuls run natively: AVX512-BF16 or AMX), "avx512" (AVX-512 without bf16), "avx2",
    or "other"."""
    if any(f in flags for f in BF16_CPU_FLAGS):
        return "avx512-bf16"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"


@lru_cache(maxsize=1)
def flags() -> frozenset:
    """This CPU's flags (empty when /proc/cpuinfo is unreadable: unknown, not absent)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))[1]
    except OSError:
        return frozenset()


def native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 present: bf16 matmuls run natively rather than emulated."""
    return any(f in flags() for f in BF16_CPU_FLAGS)
