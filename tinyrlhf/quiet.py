"""Known, harmless library messages handled at their source, once, on purpose; anything else still shows.

Installed when the package is imported (in the notebook kernel, the command line and every worker process), and
cheap: it imports no library, it only sets their own switches and attaches filters to their loggers by name.

- bitsandbytes 0.50 logs "Failed to load CPU gemm_4bit_forward from kernels-community" on CPUs with AVX512-BF16
  when the optional `kernels` package (which downloads a compiled kernel from the hub) is absent: its own NF4
  kernel then runs, with the same numbers. One INFO line instead.
- transformers logs a LOAD REPORT listing `score.weight MISSING` whenever a sequence classifier is built on a
  causal LM: the fresh score head is what a reward or value model needs. Reports with anything else still show.
- TRL warns on every import of `trl.experimental` (TRLExperimentalWarning): PPO is there, pinned at 1.12.0, the
  last release that has it (TRL_EXPERIMENTAL_SILENCE is TRL's own switch).
- transformers 5 deprecation warnings raised inside TRL 1.12 (`gradient_checkpointing`, `is_gradient_checkpointing`,
  `generation_config` passed with generation arguments): TRL's code, which will not change.
- torchao (best-of-n's bits sweep), imported by PEFT and transformers whenever it is installed: its CUDA-only
  extensions cannot load with the CPU build of torch, and it registers enums with torch's pytree in a way torch 2.13
  deprecates. One INFO line each.
- Weight-loading, shard-writing and dataset-map progress bars: one labelled bar per unit of work replaces them
  (HF_HUB_DISABLE_PROGRESS_BARS and HF_DATASETS_DISABLE_PROGRESS_BARS are the libraries' own switches).
"""

from __future__ import annotations

import logging
import os
import warnings

log = logging.getLogger("tinyrlhf")

SWITCHES = {"TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
DEPRECATIONS = (r"`gradient_checkpointing` is deprecated", r"`is_gradient_checkpointing` is deprecated")


class _Drop(logging.Filter):
    """Drops records `known(message)` recognises, leaving one INFO line (`note`) the first time."""

    def __init__(self, known, note: str):
        super().__init__()
        self.known, self.note, self.noted = known, note, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.known(record.getMessage()):
            return True
        if not self.noted:
            self.noted = True
            log.info(self.note)
        return False


def fresh_score_head_only(message: str) -> bool:
    """A LOAD REPORT whose only finding is a missing score head (newly initialised, as intended)."""
    if "LOAD REPORT" not in message:
        return False
    rows = [line for line in message.splitlines() if "|" in line and not line.startswith(("Key", "-"))]
    return bool(rows) and all(row.split("|")[0].strip().startswith("score.") and "MISSING" in row for row in rows)


FILTERS = {
    # One line per layer per step otherwise: float32 inputs of an int8 matmul are cast to float16, as expected.
    "bitsandbytes.autograd._functions": (lambda m: m.startswith("MatMul8bitLt: inputs will be cast"),
                                         "bitsandbytes casts float32 inputs of int8 matmuls to float16 (expected)"),
    "bitsandbytes.backends.cpu.ops": (lambda m: m.startswith("Failed to load CPU gemm_4bit_forward"),
                                      "bitsandbytes uses its own CPU 4-bit kernel (the optional `kernels` package "
                                      "is not installed)"),
    # torchao (best-of-n's bits sweep), imported by PEFT and transformers whenever installed: its CUDA-only
    # extensions (mxfp8, CUTLASS for sm90) cannot load with a CPU build of torch; its PyTorch paths are what we use
    "torchao": (lambda m: m.startswith("Failed to load") and ".so" in m,
                "torchao's CUDA-only extensions are not loaded on this machine (its PyTorch paths serve here)"),
    # torchao 0.18 registers its enums with torch 2.13's pytree the way torch has just deprecated (torchao's code)
    "torch.utils._pytree": (lambda m: "is an Enum subclass and is now natively supported" in m,
                            "torchao registers enums with torch's pytree in a deprecated way (harmless)"),
    "transformers.modeling_utils": (fresh_score_head_only, "score head initialised fresh, as intended"),
    "transformers.generation.utils": (lambda m: m.startswith("Passing `generation_config` together with"),
                                      "TRL 1.12 passes generation arguments beside a generation config (harmless)"),
}
_installed = False


def install() -> None:
    """Set the libraries' switches (unless the user set them) and attach the filters; idempotent."""
    global _installed
    if _installed:
        return
    for name, value in SWITCHES.items():
        os.environ.setdefault(name, value)
    for name, (known, note) in FILTERS.items():
        logging.getLogger(name).addFilter(_Drop(known, note))
    for message in DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    _installed = True
