"""Open the five notebooks in JupyterLab in a real browser, run each top to bottom, and report what a user sees.

Usage (not part of the test suite: it needs Chromium and Playwright, which the project does not depend on):
    apt-get install chromium                       # Debian's; or any Chromium / Chrome binary
    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    /tmp/pw/bin/python scripts/jupyterlab_check.py --repo CLONE --workdir WORKDIR [--chromium /usr/bin/chromium]

CLONE is a clone of this repository with `make install` done (its .venv runs JupyterLab and the kernel); the
notebooks there are saved with their outputs, so never point it at a working tree you commit from. Each notebook
is opened, run with JupyterLab's own "Run All Cells", saved, and read back: the script prints, per notebook, the
seconds, the cells run, error outputs, stderr outputs (warnings shown in red), whether progress-bar widgets
rendered, and writes a screenshot of the page to OUT (default WORKDIR/jupyterlab-check). Exit status 1 when a
notebook has an error output.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

NOTEBOOKS = ("00_Setup.ipynb", "01_Data_Preparation.ipynb", "02_SFT_Finetuning.ipynb", "03_Reward_Modeling.ipynb",
             "04_PPO_Alignment.ipynb")
TOKEN = "tinyrlhf-check"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(repo: Path, workdir: Path, port: int) -> subprocess.Popen:
    env = os.environ | {"TINYRLHF_PROFILE": "cpu", "TINYRLHF_WORKDIR": str(workdir)}
    lab = subprocess.Popen([str(repo / ".venv" / "bin" / "jupyter"), "lab", "--no-browser", f"--port={port}",
                            f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={repo}", "--allow-root"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return lab
        except OSError:
            time.sleep(1)
    lab.kill()
    raise SystemExit("JupyterLab did not start within 2 minutes")


def run_in_browser(page, port: int, name: str, out: Path, timeout_s: int) -> float:
    """Open `name`, wait for its kernel, Run All Cells from the menu, wait until no cell is queued or running and
    the kernel is idle, save, screenshot; the seconds it took."""
    # ?reset: an empty workspace, so this notebook is the only one open (JupyterLab restores the last otherwise)
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}?reset&token={TOKEN}")
    page.wait_for_selector(".jp-Notebook:visible", timeout=120_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    t0 = time.time()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()
    page.wait_for_timeout(3000)
    # an input prompt of "[*]:" is a queued or running cell
    page.wait_for_function("() => ![...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'))"
                           " && document.querySelector(\".jp-Notebook-ExecutionIndicator[data-status='idle']\")",
                           timeout=timeout_s * 1000, polling=2000)
    seconds = time.time() - t0
    page.keyboard.press("Control+s")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(out / f"{Path(name).stem}.png"), full_page=False)
    return seconds


def shut_down_kernels(page, port: int) -> None:
    """Every running kernel shut down through the server's REST API, so the next notebook has the cores."""
    api = f"http://127.0.0.1:{port}/api/kernels"
    for kernel in page.request.get(f"{api}?token={TOKEN}").json():
        page.request.delete(f"{api}/{kernel['id']}?token={TOKEN}")


def what_it_showed(path: Path, widgets: int) -> dict:
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    return {"cells": len(code), "run": sum(c.get("execution_count") is not None for c in code),
            "errors": [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o["output_type"] == "error"],
            "stderr": ["".join(o["text"])[:200] for o in outputs
                       if o["output_type"] == "stream" and o.get("name") == "stderr"],
            "widgets_rendered": widgets}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="a clone with .venv installed (its notebooks get saved)")
    ap.add_argument("--workdir", type=Path, required=True, help="TINYRLHF_WORKDIR for the notebooks")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, help="screenshots (default WORKDIR/jupyterlab-check)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per notebook")
    args = ap.parse_args(argv)
    out = args.out or args.workdir / "jupyterlab-check"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lab = start_lab(args.repo.resolve(), args.workdir.resolve(), port)
    report, failed = {}, False
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name in NOTEBOOKS:
                seconds = run_in_browser(page, port, name, out, args.timeout)
                widgets = page.locator(".jp-OutputArea-output .widget-progress").count()
                report[name] = {"seconds": round(seconds, 1)} | what_it_showed(args.repo / name, widgets)
                failed |= bool(report[name]["errors"])
                print(f"{name}: {json.dumps(report[name])}", flush=True)
                shut_down_kernels(page, port)
            browser.close()
    finally:
        lab.terminate()
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
