"""benchmarks/overlap_scoring.py runs every mode at a tiny size and writes its JSON (no timings asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "overlap_scoring.py"


def _module():
    sys.path.insert(0, str(BENCH.parent))  # the spawned worker imports the module by this name, from this path
    spec = importlib.util.spec_from_file_location("overlap_scoring", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["overlap_scoring"] = module
    spec.loader.exec_module(module)
    return module


def test_every_mode_runs_at_a_tiny_size(tmp_path, capsys):
    bench = _module()
    out = tmp_path / "overlap.json"
    assert bench.main(["--layers", "1", "--vocab", "512", "--rows", "2", "--tokens", "16", "--repeats", "1",
                       "--threads", "1", "--loop-iters", "200", "--write", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert set(r["concurrent"]) == {"thread", "thread, switch interval 0.5 ms", "process"}
    for c in r["concurrent"].values():
        assert all(math.isfinite(c[k]) for k in ("wall", "loop", "scoring", "overlap", "wall_vs_sum"))
        assert c["wall"] >= c["loop"]
    assert r["process_max_abs_score_difference"] < 1e-4  # the worker built the same model
    assert r["aten_ops_per_forward"] > 10 and r["settings"]["loop_iters"] == 200
    assert r["manifest"]["torch"] and r["manifest"]["command"]
    assert "overlap" in printed and "process" in printed
