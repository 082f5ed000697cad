"""Result files: atomic JSON writes, the manifest every result carries, and reuse of finished stages."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from . import distributed
from .config import Profile, repo_root
from .cpu import cpu_kind, flags

PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "tokenizers",
            "matplotlib", "pandas", "numpy")


def to_json_ready(obj):
    """JSON-safe copy: tuples to lists, NaN/inf to None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): to_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return to_json_ready(obj.item())
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's own 0600 would hide results from other users


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w"):
    """A temporary file beside `path`, renamed over it when the block succeeds and removed when it fails:
    readers never see half a file. Yields the open file (text mode "w" in UTF-8, or "wb")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


PARTIAL = ".partial-"  # infix of a model folder being written (atomic_folder)


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yields a temporary sibling folder of `path` to write a model into; when the block succeeds it replaces `path`
    (renamed into place), when it fails it is removed. A kill or a full disk mid-write leaves the previous folder
    (or none), never a half-written one under the final name; what a killed run left behind is cleared here on the
    next write (one run per workdir holds the lock, so no other writer owns it)."""
    import shutil

    path = Path(path)
    if not distributed.is_main():  # another rank of a launch: same writes, into a folder nobody keeps
        with _discarded_folder() as tmp:
            yield tmp
        distributed.barrier()  # past this point the main process's folder is in place
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}{PARTIAL}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}{PARTIAL}{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}{PARTIAL}old-{os.getpid()}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()


@contextmanager
def _discarded_folder():
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix=f"tinyrlhf-rank{distributed.rank()}-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(to_json_ready(obj), indent=2, allow_nan=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: run the notebook that writes it first") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and rerun the stage that writes it") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=5)
        if r.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(),
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return r.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cuda_devices() -> list[dict]:
    """Every visible CUDA device: name, memory, compute capability and whether it has native bf16 (Ampere and
    later, capability 8.0+, the rule torch.cuda.is_bf16_supported applies to the current device)."""
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": prop.name, "total_memory_bytes": prop.total_memory,
                        "free_memory_bytes": torch.cuda.mem_get_info(i)[0],
                        "capability": f"{prop.major}.{prop.minor}", "bf16_supported": prop.major >= 8})
    return devices


def hardware() -> dict:
    import psutil

    gpus = cuda_devices()
    # the CPU's kind decides bf16 arithmetic and kernel speeds: a number is reproduced to the digit on its own kind
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_kind": cpu_kind(flags()),
            "cpu_count": os.cpu_count(),
            "ram_bytes": psutil.virtual_memory().total, "cuda": bool(gpus),
            "gpus": [{"name": g["name"], "total_memory_bytes": g["total_memory_bytes"]} for g in gpus]}


def manifest(profile: Profile, stage: str, *, data_source: dict | None = None, seeds=None,
             timings: dict | None = None, peak_memory: dict | None = None) -> dict:
    """What every result file carries so its numbers can be traced and reproduced."""
    return {
        "stage": stage,
        "created_unix": time.time(),
        "profile": profile.name,
        "config": profile.to_dict(),
        "seeds": list(seeds) if seeds is not None else [profile.seed],
        "packages": package_versions(),
        "git_commit": git_commit(),
        "hardware": hardware(),
        "timings": timings or {},
        "peak_memory": peak_memory or {},
        "data_source": data_source or {},
        "command": " ".join(sys.argv[:1]),
        "distributed": distributed.describe(),
    }


def data_source_of(paths) -> dict:
    """The data provenance recorded by 01 (source and checksums), for later stages' manifests."""
    stats = paths.result("data_stats")
    if not stats.exists():
        return {}
    s = read_json(stats)
    files = {}
    for kind in ("train", "test", "sft"):
        p = paths.data_file(kind)
        if p.exists():
            files[p.name] = sha256_file(p)
    return {"source": s.get("source"), "inputs_sha256": s.get("sha256"), "prepared_sha256": files}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r * 1024) if sys.platform != "darwin" else int(r)


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class MemoryMeter:
    """Peak memory over a block of work.

    CUDA: max allocated and reserved since the block began. CPU: the process peak RSS can only grow, so a
    sampling thread records the block's own peak RSS (what the stage needed, not an earlier stage's peak).
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.result: dict = {}

    def __enter__(self):
        import threading

        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self._start_rss = current_rss_bytes()
        self._peak = self._start_rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, current_rss_bytes())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, current_rss_bytes())
        self.result = {
            "seconds": time.perf_counter() - self._t0,
            "rss_peak_bytes": self._peak,
            "rss_start_bytes": self._start_rss,
            "process_peak_rss_bytes": peak_rss_bytes(),
        }
        if self._cuda:
            self.result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
            self.result["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
        self.result["peak_bytes"] = self.result.get("cuda_max_allocated_bytes", self._peak)
        return False


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir's lock."""


@contextmanager
def workdir_lock(root: str | os.PathLike):
    """One stage at a time per workdir: two runs writing the same models and results would interleave silently.
    The holder's PID is written beside the lock so the message can name it."""
    from filelock import FileLock, Timeout

    root = Path(root)
    lock, pid_file = FileLock(str(root / ".tinyrlhf.lock")), root / ".tinyrlhf.lock.pid"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = pid_file.read_text().strip() if pid_file.exists() else "unknown"
        raise WorkdirBusyError(f"another tinyrlhf run (PID {holder}) is using the workdir {root}; wait for it to "
                               "finish, or give this run its own TINYRLHF_WORKDIR / --workdir") from None
    try:
        pid_file.write_text(str(os.getpid()))
        yield
    finally:
        lock.release()
