"""Run the pipeline's notebooks top to bottom, headless: ``python -m tinyrlhf.run_notebooks``.

Executes every ``0*.ipynb`` notebook at the repository root in order (kernel ``python3``, working directory the
repository root), writes each executed copy to ``<workdir>/executed/<name>`` (workdir: ``TINYRLHF_WORKDIR`` or
the repository root), and prints one line per notebook plus a final table. Stops at the first notebook that
fails and exits non-zero with its name and the error message; its executed copy, with the failing cell's
output, is still written.

    python -m tinyrlhf.run_notebooks                       # all notebooks, default profile
    python -m tinyrlhf.run_notebooks --profile cpu         # the quick offline run
    python -m tinyrlhf.run_notebooks --only 00 01          # notebooks whose names start with 00 or 01
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .budget import run_plan
from .config import PROFILES, ConfigError, default_profile_name, get_paths, get_profile, repo_root
from .results import atomic_write_text

PATTERN = "0*.ipynb"
KERNEL = "python3"
# Seconds a cell may run on the cpu profile, whose longest cell takes about 10 minutes: an hour means a hung kernel.
# A GPU profile's training cells run for hours (docs/time-budget.md: 03's reward models 2-3 h, 04's PPO runs 14 h on
# an RTX 4060) and nbclient's deadline is per cell, fixed, not extended by progress output: none is set there.
CELL_TIMEOUT = 3600
EXECUTED = "executed"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "failed" or "not run"
    seconds: float | None = None
    error: str | None = None
    executed: Path | None = None


class NotebookError(RuntimeError):
    """A notebook that failed; the message is the error's type and text, not a traceback."""


def discover(root: str | os.PathLike, only: list[str] | None = None) -> list[Path]:
    """The notebooks to run, in name order: all ``0*.ipynb`` in `root`, or those whose names start with a prefix
    in `only`. A prefix that matches nothing is an error listing the notebooks there are."""
    found = sorted(Path(root).glob(PATTERN))
    if not only:
        return found
    unknown = [p for p in only if not any(nb.name.startswith(p) for nb in found)]
    if unknown:
        names = ", ".join(nb.name for nb in found) or f"none ({PATTERN} in {root})"
        raise ValueError(f"--only {' '.join(unknown)}: no notebook starts with that; notebooks: {names}")
    return [nb for nb in found if any(nb.name.startswith(p) for p in only)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tinyrlhf.run_notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="run only the notebooks whose names start with one of these (e.g. 00 01)")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="profile for every notebook (sets TINYRLHF_PROFILE for the kernels)")
    parser.add_argument("--force", action="store_true",
                        help="recompute stages whose outputs exist (sets TINYRLHF_FORCE=1 for the kernels)")
    parser.add_argument("--timeout", type=int, default=None,
                        help=f"seconds per cell, 0 for no limit (default: {CELL_TIMEOUT} on the cpu profile, none on "
                             "a GPU profile, whose training cells run for hours)")
    parser.add_argument("--root", type=Path, default=repo_root(),
                        help="folder holding the notebooks (default: repo root)")
    parser.add_argument("--strip", action="store_true",
                        help="clear the notebooks' outputs in place (run before committing an edit), run nothing")
    return parser.parse_args(argv)


def cell_timeout(profile_name: str, asked: int | None = None) -> int | None:
    """Seconds a cell may run (None: no limit): `asked` (--timeout; 0 is no limit), else CELL_TIMEOUT on a profile
    that runs on the CPU and none on a GPU profile (every stage there is predicted to take longer than any fixed
    limit a user would pick, and a limit would throw away the cell's work at the deadline)."""
    if asked is not None:
        return asked or None
    profile = PROFILES.get(profile_name)
    return CELL_TIMEOUT if profile is not None and profile.device == "cpu" else None


def profile_of(env: dict[str, str]) -> str:
    """The profile the kernels will run: TINYRLHF_PROFILE in their environment, else the default for this
    machine (config.default_profile_name)."""
    return env.get("TINYRLHF_PROFILE") or default_profile_name()[0]


def kernel_env(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    """The kernels' environment: `base` (default: this process's) with the options' TINYRLHF_* variables set."""
    env = dict(os.environ if base is None else base)
    # Every notebook writes to and reads from the same place.
    env["TINYRLHF_WORKDIR"] = str(Path(env.get("TINYRLHF_WORKDIR") or repo_root()).expanduser().resolve())
    if args.profile:
        env["TINYRLHF_PROFILE"] = args.profile
    if args.force:
        env["TINYRLHF_FORCE"] = "1"
    return env


def _error_message(exc: BaseException) -> str:
    """The error's type and text, without nbclient's copy of the cell source and traceback."""
    from nbclient.exceptions import (
        CellExecutionError,
        CellTimeoutError,
        DeadKernelError,
    )

    if isinstance(exc, CellExecutionError) and getattr(exc, "ename", None):
        text = (exc.evalue or "").strip()
        return f"{exc.ename}: {text}" if text else exc.ename
    if isinstance(exc, CellTimeoutError):
        return f"a cell ran longer than the timeout: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    if isinstance(exc, DeadKernelError):
        return f"the kernel died (out of memory?): {exc}"
    return f"{type(exc).__name__}: {exc}"


def _encryption() -> dict:
    """Encrypt the local kernel connection (CurveZMQ) where jupyter_client and pyzmq can: the kernel then
    neither warns about plain-text TCP nor exposes code and outputs on the loopback interface."""
    import zmq
    from jupyter_client import KernelManager

    if "transport_encryption" in KernelManager.class_trait_names() and zmq.has("curve"):
        return {"transport_encryption": "auto"}
    return {}


def inject_parameters(nb, parameters: dict) -> None:
    """Papermill's convention: a cell tagged "injected-parameters" right after the cell tagged "parameters",
    assigning each name its value, so a headless run overrides the defaults without editing the notebook."""
    import nbformat

    if not parameters:
        return
    at = next((i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", [])), None)
    if at is None:
        raise NotebookError(f"no cell tagged {PARAMETERS_TAG!r} to inject parameters after")
    source = "# Parameters injected by tinyrlhf.run_notebooks\n" + "".join(
        f"{name} = {value!r}\n" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(at + 1, cell)


def strip(nb) -> bool:
    """Clear outputs, execution counts and cell metadata other than tags, as the notebooks are committed;
    True when anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        extra = set(cell.metadata) - {"tags"}
        if extra:
            for key in extra:
                del cell.metadata[key]
            changed = True
    return changed


def execute(path: Path, out_path: Path, *, cwd: Path, timeout: int | None, env: dict[str, str] | None = None,
            parameters: dict | None = None) -> None:
    """Execute one notebook with `env` as the kernel's whole environment (default: this process's) and
    `parameters` injected after its parameters cell; write the executed copy atomically (also when it fails);
    raise NotebookError."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    inject_parameters(nb, parameters or {})
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(env=dict(os.environ if env is None else env), **_encryption())
    except Exception as e:  # noqa: BLE001 - reported with the notebook's name, then the run stops
        raise NotebookError(_error_message(e)) from e
    finally:
        atomic_write_text(out_path, nbformat.writes(nb))


def run(notebooks: list[Path], *, out_dir: Path, cwd: Path, timeout: int | None, env: dict[str, str] | None = None,
        parameters: dict | None = None, execute_fn=execute, stream=sys.stdout) -> list[Outcome]:
    """Run the notebooks in order, stopping at the first failure; one Outcome per notebook."""
    outcomes = [Outcome(nb.name, "not run") for nb in notebooks]
    for nb, outcome in zip(notebooks, outcomes):
        print(f"[run] {nb.name} ...", file=stream, flush=True)
        outcome.executed = out_dir / nb.name
        t0 = time.perf_counter()
        try:
            execute_fn(nb, outcome.executed, cwd=cwd, timeout=timeout, env=env, parameters=parameters)
            outcome.status = "ok"
        except NotebookError as e:
            outcome.status, outcome.error = "failed", str(e)
        outcome.seconds = time.perf_counter() - t0
        print(f"[{outcome.status}] {nb.name} in {outcome.seconds:.1f} s -> {outcome.executed}", file=stream,
              flush=True)
        if outcome.status == "failed":
            break
    return outcomes


def notebook_parameters(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """What a headless run injects after each notebook's parameters cell (names as in that cell)."""
    params = {"WORKDIR": env["TINYRLHF_WORKDIR"]}
    if args.profile:
        params["PROFILE"] = args.profile
    if args.force:
        params["FORCE"] = True
    return params


def strip_notebooks(root: Path) -> int:
    """Clear the committed notebooks' outputs in place (what `make strip-notebooks` runs after editing them)."""
    import nbformat

    for path in discover(root):
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            nbformat.write(nb, path)
            print(f"stripped {path.name}")
    return 0


def summary(outcomes: list[Outcome]) -> str:
    """The final table: notebook, status, wall seconds."""
    width = max([len("notebook"), *(len(o.name) for o in outcomes)])
    lines = [f"{'notebook':<{width}}  {'status':<8}  {'seconds':>8}", f"{'-' * width}  {'-' * 8}  {'-' * 8}"]
    for o in outcomes:
        secs = "" if o.seconds is None else f"{o.seconds:.1f}"
        lines.append(f"{o.name:<{width}}  {o.status:<8}  {secs:>8}")
    total = sum(o.seconds or 0.0 for o in outcomes)
    lines.append(f"{'total':<{width}}  {'':<8}  {total:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, execute_fn=execute) -> int:
    args = parse_args(argv)
    root = args.root.resolve()
    if args.strip:
        return strip_notebooks(root)
    try:
        notebooks = discover(root, args.only)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not notebooks:
        print(f"error: no notebooks ({PATTERN}) in {root}", file=sys.stderr)
        return 2
    env = kernel_env(args)
    out_dir = Path(env["TINYRLHF_WORKDIR"]) / EXECUTED
    try:  # an unusable workdir is one sentence here, not a failure of the first notebook or of writing its copy
        get_paths(env["TINYRLHF_WORKDIR"]).make()
        out_dir.mkdir(exist_ok=True)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    profile = profile_of(env)
    timeout = cell_timeout(profile, args.timeout)
    for line in run_plan(get_profile(profile)):  # a GPU profile's hours and downloads, before anything long
        print(line, flush=True)
    print(f"Running {len(notebooks)} notebook(s) from {root}; profile {profile}"
          f"{'' if env.get('TINYRLHF_PROFILE') else ' (TINYRLHF_PROFILE not set: this machine default)'}; "
          f"{'no limit per cell' if timeout is None else f'at most {timeout} s per cell'}; artifacts under "
          f"{env['TINYRLHF_WORKDIR']}; executed copies in {out_dir}", flush=True)
    outcomes = run(notebooks, out_dir=out_dir, cwd=root, timeout=timeout, env=env,
                   parameters=notebook_parameters(args, env), execute_fn=execute_fn)
    print()
    print(summary(outcomes))
    failed = next((o for o in outcomes if o.status == "failed"), None)
    if failed:
        print(f"\nFAILED: {failed.name}: {failed.error}\n(the executed notebook with the failing cell's output: "
              f"{failed.executed})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
