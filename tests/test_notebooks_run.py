"""The five notebooks as a person sees them after Run All (executed by the pipeline fixture, the way `make run`
executes them): no cell hides outputs behind JupyterLab's "Show more outputs", nothing on stderr but what is on the
allow-list, and every long step has a labelled progress bar."""

from __future__ import annotations

import re

import nbformat
import pytest

pytestmark = pytest.mark.slow

MAX_OUTPUTS = 20  # JupyterLab folds a cell's outputs past 50; stay well under
# stderr lines a user may see. Empty on purpose: a known harmless library message is handled at its source
# (tinyrlhf/quiet.py); anything else on stderr is news and fails here.
STDERR_ALLOWED: tuple[str, ...] = ()
# A bar per job running at once, relabelled as the next job starts, and one counting finished jobs: the labels a
# bar had when first displayed are in the outputs, the last ones in the widgets' saved state. Labels are patterns:
# which job first shows a bar depends on timing (in 04, when the SFT policy's evaluation finishes before the first
# PPO run reports, that run takes over its bar and the second run opens the next one).
exact = re.escape
BARS = {"02_SFT_Finetuning.ipynb": [exact("Pre-training the base model"), exact("SFT (LoRA)"),
                                    exact("Sampling the SFT policy")],
        # 9 arms' models, then the same-recipe judge's (eval.second_judge)
        "03_Reward_Modeling.ipynb": [exact("Reward models finished"), exact("RM bf16/seed0 (1/10)"),
                                     exact("RM int8/seed0 (2/10)"), exact("RM int4/seed2 (9/10)"),
                                     exact("RM same-recipe-judge (10/10)"),
                                     exact("Sampling the candidate pool"), exact("Reward models scored"),
                                     exact("Ranking the pool: bf16/seed0")],
        "04_PPO_Alignment.ipynb": [exact("Policies finished"), exact("Evaluating the SFT policy"),
                                   r"PPO bf16 · RM seed \d · PPO seed \d+ \([12]/9\)",
                                   exact("PPO int4 · RM seed 2 · PPO seed 2 (9/9)")]}


def _executed(pipeline):
    folder = pipeline[3]
    return {p.name: nbformat.read(p, as_version=4) for p in sorted(folder.glob("0*.ipynb"))}


def test_all_five_ran_and_no_cell_has_more_than_twenty_outputs(pipeline):
    notebooks = _executed(pipeline)
    assert len(notebooks) == 5
    for name, nb in notebooks.items():
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            assert not any(o.output_type == "error" for o in cell.outputs), (name, i)
            assert len(cell.outputs) <= MAX_OUTPUTS, f"{name}, code cell {i}: {len(cell.outputs)} outputs"


def test_nothing_on_stderr_outside_the_allow_list(pipeline):
    unexpected = []
    for name, nb in _executed(pipeline).items():
        for cell in (c for c in nb.cells if c.cell_type == "code"):
            for out in cell.outputs:
                if out.output_type == "stream" and out.name == "stderr":
                    lines = [line for line in out.text.splitlines() if line.strip()]
                    unexpected += [f"{name}: {line}" for line in lines
                                   if not any(re.search(p, line) for p in STDERR_ALLOWED)]
    assert not unexpected, "\n".join(unexpected[:20])


def _widget_texts(nb) -> list[str]:
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [m["state"]["value"] for m in state.values() if isinstance(m.get("state", {}).get("value"), str)]


def test_every_long_step_has_a_labelled_progress_bar(pipeline):
    for name, labels in BARS.items():
        nb = _executed(pipeline)[name]
        shown = " ".join([o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code"
                          for o in c.outputs] + _widget_texts(nb))
        shown = shown.replace("\u2007", " ").replace("\xa0", " ")  # tqdm pads widget labels with figure spaces
        for label in labels:
            assert re.search(label, shown), f"{name}: no progress bar labelled {label!r}"
