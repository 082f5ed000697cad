"""The committed notebooks, checked without running them, and the run-all command's argument handling.

The notebooks are the source (edited in JupyterLab) and must be committed clean: no outputs, no execution counts
(`make strip-notebooks` clears them), valid nbformat v4, with exactly one `parameters` cell before any other code
cell.
"""

from __future__ import annotations

import json

import sys
from pathlib import Path

import nbformat
import pytest

from tinyrlhf import run_notebooks as rn
from tinyrlhf.config import PROFILES

REPO = Path(__file__).resolve().parent.parent
EXPECTED = ["00_Setup.ipynb", "01_Data_Preparation.ipynb", "02_SFT_Finetuning.ipynb",
            "03_Reward_Modeling.ipynb", "04_PPO_Alignment.ipynb"]
NOTEBOOKS = sorted(REPO.glob("0*.ipynb"))
ENV_READS = ('os.environ.get("TINYRLHF_PROFILE")', 'os.environ.get("TINYRLHF_WORKDIR")',
             'os.environ.get("TINYRLHF_FORCE", "0") == "1"')


def test_the_five_notebooks_are_committed():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.stem)
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_valid_nbformat_v4(notebook):
    path, nb = notebook
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    # nbformat 4.5 cells carry ids; a cell without one prints a MissingIDFieldWarning on every run
    raw = json.loads(path.read_text())  # as committed: nbformat.read fills missing ids in (and warns)
    ids = [cell.get("id") for cell in raw["cells"]] if raw["nbformat_minor"] >= 5 else []
    assert all(ids) and len(set(ids)) == len(ids), ids


def test_no_outputs_and_no_execution_counts(notebook):
    path, nb = notebook
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs; run make strip-notebooks"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
        assert "attachments" not in cell or not cell.attachments


def test_one_parameters_cell_before_any_other_code(notebook):
    path, nb = notebook
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters"
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert tagged[0] == first_code
    source = nb.cells[first_code].source
    for read in ENV_READS:
        assert read in source, f"{path.name}: the parameters cell must read {read}"
    assert ("INSTALL_MISSING = False" in source) == path.name.startswith("00")


def test_shape_title_setup_and_next(notebook):
    path, nb = notebook
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "**Writes:**" in nb.cells[0].source
    setup = next(c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    for needed in ("%matplotlib inline", "profile = get_profile(PROFILE)", "paths = get_paths(WORKDIR).make()",
                   "show.profile_line(PROFILE, profile)"):
        assert needed in setup.source, f"{path.name}: the set-up cell lacks {needed!r}"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Next")
    index = EXPECTED.index(path.name)
    if index + 1 < len(EXPECTED):
        assert EXPECTED[index + 1] in last.source


def test_cells_compile(notebook):
    """Every code cell is valid Python once IPython's line magics are set aside."""
    path, nb = notebook
    for cell in nb.cells:
        if cell.cell_type == "code":
            code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
            compile(code, f"{path.name}:{cell.id}", "exec")


# ---------------------------------------------------------------------------------------- run_notebooks
def fake_notebooks(folder: Path, names=("00_A.ipynb", "01_B.ipynb", "02_C.ipynb", "03_D.ipynb")) -> Path:
    for name in names:
        nbformat.write(nbformat.v4.new_notebook(), folder / name)
    (folder / "10_not_ours.ipynb").write_text("{}")
    (folder / "0_notes.txt").write_text("")
    return folder


def test_discover_all_in_order(tmp_path):
    fake_notebooks(tmp_path)
    assert [p.name for p in rn.discover(tmp_path)] == ["00_A.ipynb", "01_B.ipynb", "02_C.ipynb", "03_D.ipynb"]


def test_discover_by_prefix_keeps_order(tmp_path):
    fake_notebooks(tmp_path)
    assert [p.name for p in rn.discover(tmp_path, ["03", "00"])] == ["00_A.ipynb", "03_D.ipynb"]
    assert [p.name for p in rn.discover(tmp_path, ["01_B"])] == ["01_B.ipynb"]


def test_discover_unknown_prefix_lists_notebooks(tmp_path):
    fake_notebooks(tmp_path)
    with pytest.raises(ValueError, match=r"--only 07.*00_A\.ipynb, 01_B\.ipynb"):
        rn.discover(tmp_path, ["00", "07"])


def test_discover_the_repository():
    assert [p.name for p in rn.discover(REPO)] == EXPECTED


def test_parse_args_defaults():
    args = rn.parse_args([])
    assert args.only is None and args.profile is None and not args.force
    assert args.timeout is None  # chosen per profile: rn.cell_timeout
    assert args.root == REPO


def test_cell_timeout_is_an_hour_on_the_cpu_and_none_on_a_gpu_profile():
    assert rn.cell_timeout("cpu") == rn.CELL_TIMEOUT == 3600
    gpu = [name for name, p in PROFILES.items() if p.device != "cpu"]
    assert gpu and all(rn.cell_timeout(name) is None for name in gpu)
    assert rn.cell_timeout("rtx4060", 60) == 60 and rn.cell_timeout("cpu", 0) is None  # --timeout wins; 0: none


def test_no_gpu_profile_stage_can_reach_the_cell_limit_of_make_run():
    """make run (python -m tinyrlhf.run_notebooks, no --timeout) must not stop a GPU profile's stage at its cell
    limit: every stage runs in one cell, so each stage's predicted hours on an RTX 4060 beside an 8-core desktop,
    at the data's upper-bound lengths, times a wide margin for a slower card, must stay under the limit."""
    from tinyrlhf import budget

    margin = 5.0
    for name, profile in PROFILES.items():
        if profile.device == "cpu":
            continue
        limit = rn.cell_timeout(name, rn.parse_args([]).timeout)
        for row in budget.predict(profile, budget.desktop(8)):
            assert limit is None or margin * row["hours"] * 3600 < limit, (
                f"{name}: {row['stage']} is predicted at {row['hours']:.1f} h, past make run's cell limit of "
                f"{limit} s")


def test_main_runs_a_gpu_profile_with_no_cell_limit(tmp_path, monkeypatch, capsys):
    fake_notebooks(tmp_path)
    monkeypatch.setenv("TINYRLHF_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("TINYRLHF_PROFILE", "rtx4060")
    execute, calls = recorder()
    assert rn.main(["--root", str(tmp_path), "--only", "00"], execute_fn=execute) == 0
    assert calls[0]["timeout"] is None
    assert "profile rtx4060; no limit per cell" in capsys.readouterr().out


def test_parse_args_only_and_profile():
    args = rn.parse_args(["--only", "00", "01", "--profile", "cpu", "--force"])
    assert args.only == ["00", "01"] and args.profile == "cpu" and args.force


def test_unknown_profile_is_refused_with_the_allowed_names(capsys):
    with pytest.raises(SystemExit) as e:
        rn.parse_args(["--profile", "gtx480"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in PROFILES)


def test_kernel_env(tmp_path):
    base = {"PATH": "/bin", "TINYRLHF_PROFILE": "rtx4060", "TINYRLHF_WORKDIR": str(tmp_path)}
    env = rn.kernel_env(rn.parse_args(["--profile", "cpu", "--force"]), base)
    assert env["TINYRLHF_PROFILE"] == "cpu" and env["TINYRLHF_FORCE"] == "1" and env["PATH"] == "/bin"
    assert env["TINYRLHF_WORKDIR"] == str(tmp_path.resolve())
    assert base["TINYRLHF_PROFILE"] == "rtx4060"  # not modified
    env = rn.kernel_env(rn.parse_args([]), {"TINYRLHF_PROFILE": "cpu"})
    assert env["TINYRLHF_PROFILE"] == "cpu" and "TINYRLHF_FORCE" not in env
    assert env["TINYRLHF_WORKDIR"] == str(REPO)  # default: the repository root


def recorder(fail: str | None = None):
    calls = []

    def execute(path, out_path, *, cwd, timeout, env, parameters):
        calls.append({"name": path.name, "out": out_path, "cwd": cwd, "timeout": timeout, "env": env,
                      "parameters": parameters})
        if path.name == fail:
            raise rn.NotebookError("ValueError: boom")

    return execute, calls


def test_main_runs_the_selection_in_order(tmp_path, monkeypatch, capsys):
    (tmp_path / "nbs").mkdir()
    fake_notebooks(tmp_path / "nbs")
    monkeypatch.setenv("TINYRLHF_WORKDIR", str(tmp_path / "work"))
    execute, calls = recorder()
    rc = rn.main(["--root", str(tmp_path / "nbs"), "--only", "02", "00", "--profile", "cpu", "--timeout", "60"],
                 execute_fn=execute)
    assert rc == 0
    assert [c["name"] for c in calls] == ["00_A.ipynb", "02_C.ipynb"]
    for c in calls:
        assert c["out"] == (tmp_path / "work").resolve() / "executed" / c["name"]
        assert c["cwd"] == (tmp_path / "nbs").resolve() and c["timeout"] == 60
        assert c["env"]["TINYRLHF_PROFILE"] == "cpu"
        assert c["parameters"] == {"PROFILE": "cpu", "WORKDIR": str((tmp_path / "work").resolve())}
    out = capsys.readouterr().out
    assert "00_A.ipynb" in out and "02_C.ipynb" in out and "total" in out


def test_main_stops_at_a_failure_and_names_it(tmp_path, monkeypatch, capsys):
    fake_notebooks(tmp_path)
    monkeypatch.setenv("TINYRLHF_WORKDIR", str(tmp_path / "work"))
    execute, calls = recorder(fail="01_B.ipynb")
    rc = rn.main(["--root", str(tmp_path)], execute_fn=execute)
    assert rc == 1
    assert [c["name"] for c in calls] == ["00_A.ipynb", "01_B.ipynb"]
    captured = capsys.readouterr()
    assert "FAILED: 01_B.ipynb: ValueError: boom" in captured.err
    rows = {line.split()[0]: line.split()[1] for line in captured.out.splitlines()
            if line.startswith(("00_", "01_", "02_", "03_"))}
    assert rows == {"00_A.ipynb": "ok", "01_B.ipynb": "failed", "02_C.ipynb": "not", "03_D.ipynb": "not"}


def test_main_on_a_workdir_that_is_a_file_is_one_sentence(tmp_path, monkeypatch, capsys):
    fake_notebooks(tmp_path)
    (tmp_path / "work").write_text("a file, not a folder")
    monkeypatch.setenv("TINYRLHF_WORKDIR", str(tmp_path / "work"))
    execute, calls = recorder()
    assert rn.main(["--root", str(tmp_path)], execute_fn=execute) == 2
    err = capsys.readouterr().err
    assert calls == [] and "cannot hold the pipeline's folders" in err and "Traceback" not in err


def test_main_unknown_prefix_exits_2(tmp_path, capsys):
    fake_notebooks(tmp_path)
    execute, calls = recorder()
    assert rn.main(["--root", str(tmp_path), "--only", "09"], execute_fn=execute) == 2
    assert calls == [] and "09" in capsys.readouterr().err


def test_summary_table():
    outcomes = [rn.Outcome("00_Setup.ipynb", "ok", 7.52), rn.Outcome("01_Data_Preparation.ipynb", "failed", 1.0),
                rn.Outcome("02_SFT_Finetuning.ipynb", "not run")]
    text = rn.summary(outcomes)
    assert "00_Setup.ipynb" in text and "7.5" in text and "not run" in text
    assert text.splitlines()[-1].split() == ["total", "8.5"]


def test_error_message_is_short():
    from nbclient.exceptions import CellExecutionError

    err = CellExecutionError("long traceback\n" * 50, "ValueError", "bad value")
    assert rn._error_message(err) == "ValueError: bad value"


# ------------------------------------------------------------------------------- display helpers (tinyrlhf.display)
def test_format_bytes_and_seconds():
    from tinyrlhf import display as show

    assert show.format_bytes(512) == "512 B"
    assert show.format_bytes(3 * 1024) == "3.0 KiB"
    assert show.format_bytes(8 * 2**30) == "8.0 GiB"
    assert show.format_bytes(None) == show.MISSING
    assert show.format_seconds(12.34) == "12.3 s"
    assert show.format_seconds(245) == "4 min 05 s"
    assert show.format_seconds(3720) == "1 h 02 min"


def _fake_results():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_schema import make_ppo_results, make_rm_results

    return make_rm_results(), make_ppo_results()


def test_ppo_tables():
    from tinyrlhf import display as show

    _, ppo = _fake_results()
    m = show.cross_matrix_table(ppo)
    assert m.shape == (len(ppo["cross_matrix"]["policies"]), 1 + len(ppo["cross_matrix"]["judges"]))
    assert list(m["policy"])[0] == "SFT policy"
    samples = show.samples_table(ppo, n=2)
    assert list(samples["policy"])[:2] == ["SFT", "SFT"]
    shown = {p for p in samples["policy"] if p != "SFT"}
    assert len(shown) == len(ppo["arms"])  # one sample group per arm, from its first finished seed
    assert len(samples) <= 2 * (1 + len(ppo["arms"]))


def test_stage_tables_and_figures():
    from matplotlib.figure import Figure

    from tinyrlhf import display as show
    from tinyrlhf.data import Pair

    rm, _ = _fake_results()
    assert isinstance(show.plot_rm_loss(rm), Figure)
    stats = {"source": "synthetic", "sha256": {"synthetic": "ab"}, "rows_read": 10, "parsed": 9, "kept": 8,
             "train": 7, "test": 1, "skipped": {"bad_json": 1, "too_long": 1},
             "skipped_examples": {"bad_json": [{"where": "f:3", "detail": "Expecting value"}]},
             "token_lengths": {k: {"p50": 1, "p90": 2, "p99": 3, "max": 4, "mean": 1.5} for k in show.LENGTH_FIELDS}}
    assert dict(show.data_counts_table(stats).values)["kept"] == "8"
    skipped = show.skipped_table(stats)
    assert list(skipped["reason"]) == ["bad_json", "too_long"] and "f:3" in skipped["examples"][0]
    assert list(show.length_percentiles_table(stats)["field"]) == list(show.LENGTH_FIELDS)
    lengths = {"train": {"prompt": [3, 5], "chosen": [4, 4], "rejected": [2, 9]}, "test": {"prompt": [1]}}
    assert isinstance(show.plot_token_lengths(lengths, {"prompt": 8}), Figure)
    pairs = [Pair("\n\nHuman: a <b> & c\n\nAssistant:", "yes", "no")] * 4
    table = show.pairs_table(pairs, n=3)
    assert len(table) == 3
    html = show.wrap(table).to_html()
    assert "&lt;b&gt; &amp; c" in html and "<b>" not in html  # dialogue text is escaped, not rendered as HTML
    sft = {"before": {"loss": 2.0, "perplexity": 7.4, "tokens": 10, "pairs": 2},
           "after": {"loss": 1.5, "perplexity": 4.5, "tokens": 10, "pairs": 2}, "loss_drop": 0.5,
           "loss_curve": [{"step": 1, "loss": 2.1}, {"step": 2, "loss": 1.6}], "train_seconds": 3.0,
           "peak_memory_bytes": 2**20, "trainable_parameters": 10, "total_parameters": 100,
           "generations": [{"prompt": "p", "before": "b", "after": "a"}],
           "base_pretraining": {"built": True, "steps": 4, "loss_curve": [5.0, 3.0], "first_loss": 5.0,
                                "final_loss": 3.0, "seconds": 2.0, "parameters": 100}}
    assert list(show.sft_before_after_table(sft)["held-out loss"]) == ["2.0000", "1.5000"]
    assert dict(show.sft_parameters_table(sft).values)["trainable share"] == "10.00%"
    assert len(show.plot_sft_loss(sft).axes) == 2
    assert list(show.generations_table(sft).columns) == ["prompt", "before SFT", "after SFT"]


def test_setup_helpers(monkeypatch, tmp_path):
    from matplotlib.figure import Figure

    from tinyrlhf import display as show
    from tinyrlhf.config import get_paths, get_profile

    profile = get_profile("cpu")
    monkeypatch.setenv("TINYRLHF_PROFILE", "cpu")
    assert show.profile_line("cpu", profile) == "Profile: cpu (TINYRLHF_PROFILE is set)"
    monkeypatch.delenv("TINYRLHF_PROFILE")
    assert "parameters cell" in show.profile_line("cpu", profile)
    report = {"cuda": {"devices": [{"total_memory_bytes": 8 * 2**30}]}, "memory": {"ram_total_bytes": 2**34}}
    assert show.capacities(report) == (8 * 2**30, 2**34)
    report["cuda"]["devices"][0]["free_memory_bytes"] = 7 * 2**30  # a desktop card drives the display too
    assert show.capacities(report) == (7 * 2**30, 2**34)  # the verdicts judge what is free
    report["cuda"]["devices"] = []
    assert show.capacities(report) == (None, 2**34)
    verdicts = [{"stage": "sft", "device": "cpu", "estimate_bytes": 2**30, "capacity_bytes": 2**34,
                 "verdict": "fits", "reason": "needs 1.0 GiB of 16.0 GiB"}]
    assert list(show.verdicts_table(verdicts)["estimate"]) == ["1.0 GiB"]
    assert isinstance(show.plot_verdicts(verdicts), Figure)
    assert "nothing to install" in show.install_summary([], installed=False)
    assert "INSTALL_MISSING = True" in show.install_summary(["pip install x==1"], installed=False)
    paths = get_paths(tmp_path).make()
    assert show.paths_table(paths)["exists"].all()
    assert "Reused" in show.reuse_note({"reused": True}) and "Computed" in show.reuse_note({"reused": False})


def test_injected_parameters_follow_the_parameters_cell_and_override_it():
    nb = nbformat.read(NOTEBOOKS[1], as_version=4)
    rn.inject_parameters(nb, {"PROFILE": "cpu", "FORCE": True})
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    at = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert tags[at + 1] == ["injected-parameters"]
    namespace = {}
    exec(nb.cells[at].source + "\n" + nb.cells[at + 1].source, namespace)
    assert namespace["PROFILE"] == "cpu" and namespace["FORCE"] is True


def test_strip_clears_what_jupyterlab_adds(tmp_path):
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi")]
    code.execution_count = 3
    code.metadata["execution"] = {"iopub.status.busy": "2026-11-23"}
    assert rn.strip(nb) and not rn.strip(nb)
    assert code.outputs == [] and code.execution_count is None and set(code.metadata) <= {"tags"}


def test_main_on_a_cuda_machine_says_the_gpu_profile_s_hours_and_downloads_before_the_first_notebook(
        tmp_path, monkeypatch, capsys):
    """`make run` on a machine with CUDA starts rtx4060 (TINYRLHF_PROFILE unset): before anything long it says so,
    with the predicted hours (docs/time-budget.md's), the downloads at their pinned commits and the cpu alternative;
    the cpu profile says none of it."""
    from tinyrlhf import budget, config

    fake_notebooks(tmp_path)
    monkeypatch.setenv("TINYRLHF_WORKDIR", str(tmp_path / "work"))
    monkeypatch.delenv("TINYRLHF_PROFILE", raising=False)
    monkeypatch.delenv("TINYRLHF_HH_DIR", raising=False)
    monkeypatch.setattr(rn, "default_profile_name", lambda: ("rtx4060", "CUDA device found"))  # a CUDA machine
    printed_before_first = []

    def execute(path, out_path, **_):
        if not printed_before_first:
            printed_before_first.append(capsys.readouterr().out)

    assert rn.main(["--root", str(tmp_path)], execute_fn=execute) == 0
    said = printed_before_first[0]
    at = budget.milestones(config.get_profile("rtx4060"), budget.predict(
        config.get_profile("rtx4060"), budget.desktop(), lengths=budget.expected(config.get_profile("rtx4060"))))
    assert f"Profile rtx4060: predicted {at['bon_tax_hours']:.1f} h" in said and f"{at['study_hours']:.1f} h" in said
    assert f"{at['study_hours']:.1f} h" in (REPO / "docs" / "time-budget.md").read_text()
    revisions = config.PINNED_REVISIONS
    assert f"Qwen/Qwen2.5-0.5B at {revisions['Qwen/Qwen2.5-0.5B'][:12]}" in said
    assert f"Anthropic/hh-rlhf (helpful-base, harmless-base) at {revisions['Anthropic/hh-rlhf'][:12]}" in said
    assert "the judge Skywork/Skywork-Reward-V2-Llama-3.2-1B at the commit it pins at its first download" in said
    assert "TINYRLHF_PROFILE=cpu make run" in said
    assert said.index("Profile rtx4060") < said.index("Running ")
    assert budget.run_plan(config.get_profile("cpu")) == []
    monkeypatch.setenv("TINYRLHF_HH_DIR", str(tmp_path))  # a local copy of the data: only the model downloads
    assert "hh-rlhf" not in " ".join(budget.run_plan(config.get_profile("rtx4060")))
    setup = nbformat.read(REPO / "00_Setup.ipynb", as_version=4)
    first_code = next(c for c in setup.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    assert "budget.run_plan(profile)" in first_code.source  # 00_Setup says it too, in its first cell after parameters
