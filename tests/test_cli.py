"""The command line: `tinyrlhf run|plots|env` and `python -m tinyrlhf`, over the same stage functions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tinyrlhf import cli
from tinyrlhf.config import ConfigError


def test_assignments_are_read_as_json_or_else_as_strings():
    assert cli.parse_assignment("ppo.steps=20") == ("ppo.steps", 20)
    assert cli.parse_assignment("ppo.seeds=[0, 1]") == ("ppo.seeds", [0, 1])
    assert cli.parse_assignment("base.model=Qwen/Qwen2.5-0.5B") == ("base.model", "Qwen/Qwen2.5-0.5B")
    assert cli.parse_assignment("sft.gradient_checkpointing=true") == ("sft.gradient_checkpointing", True)
    with pytest.raises(ConfigError, match="section.field=value"):
        cli.parse_assignment("ppo.steps")


def test_help_lists_the_stages_and_every_setting():
    text = cli.make_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for stage in ("data", "sft", "rm", "ppo"):
        assert f"\n  {stage} " in text
    for setting in ("ppo.kl_coef", "rm.precisions", "sft.lr", "data.subsets", "base.model", "report_to"):
        assert setting in text


def test_python_dash_m_runs_the_data_stage_and_reuses_it(tmp_path):
    argv = [sys.executable, "-m", "tinyrlhf", "run", "data", "--profile", "cpu", "--workdir", str(tmp_path), "-q",
            "--set", "data.synthetic_pairs=200"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "data: computed" in first.stdout
    stats = json.loads((tmp_path / "results" / "data_stats.json").read_text())
    assert stats["rows_read"] == 200 and stats["manifest"]["config"]["data"]["synthetic_pairs"] == 200
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "data: reused" in again.stdout


def test_bad_settings_and_stages_end_with_one_line_and_no_traceback(tmp_path, capsys):
    assert cli.main(["run", "data", "--profile", "cpu", "--workdir", str(tmp_path), "--set", "ppo.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'ppo.bogus'" in err and "Traceback" not in err
    assert cli.main(["run", "nonsense", "--profile", "cpu", "--workdir", str(tmp_path)]) == 1
    assert "unknown stage" in capsys.readouterr().err
