#!/usr/bin/env python
"""Generate the five notebooks at the repository top level from the cell sources below.

The notebooks are generated so that they are reviewable code: edit this file, run it, commit both.
Every notebook gets the same shape: a title cell (what it does, what it writes), ONE code cell tagged
``parameters`` (papermill convention) that reads the TINYRLHF_* environment variables, a set-up cell, then
one package call per section followed by tables and plots, and a closing "Next" cell. Cells carry fixed ids
and no outputs, so running this script twice gives byte-identical files.

    python scripts/new_notebooks.py            # writes into the repository root
    python scripts/new_notebooks.py --out DIR  # writes elsewhere (the tests compare against the committed ones)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
PARAMETERS_TAG = "parameters"

PARAMETERS = '''\
import os

PROFILE = os.environ.get("TINYRLHF_PROFILE")  # None: rtx4060 when a CUDA GPU is visible, else cpu
WORKDIR = os.environ.get("TINYRLHF_WORKDIR")  # None: artifacts go under the repository root
FORCE = os.environ.get("TINYRLHF_FORCE", "0") == "1"  # True: recompute even when outputs for these settings exist'''


def setup_cell(imports: str) -> str:
    return f'''\
%matplotlib inline
from IPython.display import display

import tinyrlhf.display as show
{imports}
from tinyrlhf.config import get_paths, get_profile

profile = get_profile(PROFILE)
paths = get_paths(WORKDIR).make()
print(show.profile_line(PROFILE, profile))
print(f"Artifacts under {{paths.root}}")'''


def md(text: str):
    return ("markdown", text.strip("\n"))


def code(text: str):
    return ("code", text.strip("\n"))


def params(extra: str = ""):
    return ("parameters", PARAMETERS + extra)


# ------------------------------------------------------------------------------------------------ 00 Setup
SETUP = [
    md("""
# 00 · Setup: is this machine ready?

This notebook checks the environment before anything is trained: Python and package versions (against the
pinned ones), the CUDA device and its memory, CPU features (is bf16 native?), the bitsandbytes backend, RAM
and disk. It lists what is missing with how to fix it, estimates whether every stage of the chosen profile
fits in memory, and creates the artifact folders.

**Writes:** `results/environment.json`; creates `data/`, `models/`, `results/` and `results/figures/`.

Change the settings in the next cell (or set the `TINYRLHF_*` environment variables before starting
JupyterLab). Nothing is installed unless you set `INSTALL_MISSING = True`.
"""),
    params('\nINSTALL_MISSING = False  # True: pip install the pinned packages that are missing (never torch)'),
    code(setup_cell("from tinyrlhf import env, memory")),
    md("""
## The environment

Facts only: nothing here touches the network. The profile row says which profile a notebook picks when
`TINYRLHF_PROFILE` is not set.
"""),
    code("""
report = env.environment_report(paths)
display(show.wrap(env.report_table(report), width="60em"))
"""),
    md("""
## Problems and how to fix them

Each row says what stands in the way of running the chosen profile here, why it matters, and the fix.
"""),
    code("""
issues = env.problems(report, profile)
display(show.problems_view(issues, profile))
"""),
    md("""
## Missing packages

The pinned versions are the ones tested together (`trl==1.12.0` is the last release with PPO).
By default this only prints the `pip` command; torch is never installed from here, because the right wheel
depends on your platform and CUDA version.
"""),
    code("""
commands = env.install_missing(dry_run=not INSTALL_MISSING)
print(show.install_summary(commands, installed=INSTALL_MISSING))
"""),
    md("""
## Will each stage fit in memory?

Estimated peak memory of every stage of the profile (SFT, one reward model per precision, PPO against each),
judged against the GPU when there is one and against RAM otherwise. The estimates err on the high side;
*tight* means above 85% of the capacity.
"""),
    code("""
gpu_bytes, ram_bytes = show.capacities(report)
verdicts = memory.stage_verdicts(profile, gpu_bytes=gpu_bytes, ram_bytes=ram_bytes)
display(show.wrap(show.verdicts_table(verdicts), width="40em"))
display(show.plot_verdicts(verdicts))
"""),
    md("""
## Save the report and create the artifact folders
"""),
    code("""
written = env.write_environment(report, paths, profile, verdicts)
print(f"Wrote {written}")
display(show.paths_table(paths))
"""),
    md("""
## Next

Open **`01_Data_Preparation.ipynb`** to get the preference data, parse it and split it.
"""),
]

# --------------------------------------------------------------------------------------- 01 Data preparation
DATA = [
    md("""
# 01 · Data preparation: preference pairs

This notebook gets the preference data, parses every record into *prompt / chosen / rejected*, skips and
counts malformed records, removes duplicates, splits train/test by prompt, and drops pairs longer than the
profile's token limits. The source is the profile's: Anthropic HH-RLHF from the hub, a local copy of
Anthropic's `*.jsonl.gz` files when `TINYRLHF_HH_DIR` is set, or the embedded synthetic set (`cpu` profile).

**Writes:** `data/train_prefs.jsonl`, `data/test_prefs.jsonl`, `data/sft_train.jsonl` and
`data/data_stats.json` (on the `cpu` profile also the tokenizer trained on the data, in `models/base/`).
A second run with the same settings reuses them unless `FORCE` is set.
"""),
    params(),
    code(setup_cell("from tinyrlhf import data")),
    md("""
## Prepare the data

One call does all of it; the table counts what was read, parsed, kept and how it was split.
"""),
    code("""
stats = data.prepare_data(profile, paths, force=FORCE)
print(show.reuse_note(stats))
display(show.data_counts_table(stats))
"""),
    md("""
## What was skipped, and why

Malformed records (bad JSON, missing keys, no final assistant reply, ...) are skipped and counted; too many of
them stop the run. Duplicates and pairs over the token limits are dropped too. A few examples per reason say
where they were.
"""),
    code("""
display(show.wrap(show.skipped_table(stats)))
"""),
    md("""
## Token lengths

Percentiles of the kept pairs, in tokens of the model's tokenizer, then their distribution; the dashed lines
are the profile's limits (`data.max_prompt_tokens`, `data.max_response_tokens`).
"""),
    code("""
display(show.length_percentiles_table(stats))
"""),
    code("""
lengths = data.lengths_of_prepared(profile, paths)
limits = {"prompt": profile.data.max_prompt_tokens, "chosen": profile.data.max_response_tokens,
          "rejected": profile.data.max_response_tokens}
display(show.plot_token_lengths(lengths, limits))
"""),
    md("""
## Example pairs

The first training pairs as written to `data/train_prefs.jsonl`: the dialogue so far, the preferred reply and
the rejected one.
"""),
    code("""
train_pairs = data.read_pairs(data.data_files(paths)["train"])
display(show.wrap(show.pairs_table(train_pairs, n=3)))
"""),
    md("""
## Next

Open **`02_SFT_Finetuning.ipynb`** to fine-tune the base model on the chosen replies.
"""),
]

# ---------------------------------------------------------------------------------------------------- 02 SFT
SFT = [
    md("""
# 02 · Supervised fine-tuning (LoRA)

This notebook fine-tunes the base model on *prompt + chosen reply* with LoRA adapters (TRL's `SFTTrainer`),
the policy that PPO starts from. On the `cpu` profile the base model is a tiny GPT-2 that is first built and
pre-trained here on the training dialogues. The held-out loss on the test pairs is measured before and after,
and a few prompts are answered by both models.

**Writes:** `models/sft/` (the LoRA adapter and the merged model), `results/sft_results.json`
(on the `cpu` profile also `models/base/`). A second run with the same settings reuses them unless `FORCE`
is set.
"""),
    params(),
    code(setup_cell("from tinyrlhf import sft")),
    md("""
## Train

Progress bars show the base model's pre-training (`cpu` profile) and the SFT steps.
"""),
    code("""
result = sft.run_sft(profile, paths, force=FORCE)
print(show.reuse_note(result))
"""),
    md("""
## Held-out loss before and after

Loss (and perplexity) of the reply tokens of the test pairs' chosen replies: SFT should lower it.
"""),
    code("""
display(show.sft_before_after_table(result))
"""),
    md("""
## What was trained, and what it cost

LoRA trains a small share of the parameters; the rest of the model stays frozen.
"""),
    code("""
display(show.sft_parameters_table(result))
"""),
    md("""
## Loss curves

The SFT training loss per logged step (dotted and dashed lines: held-out loss before and after), and, when
the base model was built here, its pre-training loss.
"""),
    code("""
display(show.plot_sft_loss(result))
"""),
    md("""
## Generations before and after

The same test prompts answered by the base model and by the fine-tuned one.
"""),
    code("""
display(show.wrap(show.generations_table(result)))
"""),
    md("""
## Next

Open **`03_Reward_Modeling.ipynb`** to train the reward models at bf16, int8 and int4.
"""),
]

# ----------------------------------------------------------------------------------------------------- 03 RM
RM = [
    md("""
# 03 · Reward models at bf16, int8 and int4

This notebook trains one reward model per precision on the preference pairs (TRL's `RewardTrainer`, LoRA on
the SFT model, with the backbone in bf16, LLM.int8 or NF4 through bitsandbytes and the score head kept in
full precision), then scores the test pairs with each on the CPU, where PPO will use them. A precision that
fails is recorded with its reason and the others go on.

**Writes:** `models/rm/{bf16,int8,int4}/`, `results/rm_results.json`, and the figures
`results/figures/rm_accuracy.{png,pdf}` and `results/figures/rm_costs.{png,pdf}`.
"""),
    params(),
    code(setup_cell("from tinyrlhf import plots, reward")),
    md("""
## Train and evaluate

One reward model per precision, in turn; progress bars show each one's training.
"""),
    code("""
result = reward.run_reward_models(profile, paths, force=FORCE)
print(show.reuse_note(result))
"""),
    md("""
## The reward models side by side

Accuracy is the share of test pairs where the chosen reply scores above the rejected one (95% Wilson interval).
Agreement and rank correlation compare each model's preferences and scores with the bf16 model's: how much
quantization changes the reward signal PPO will follow.
"""),
    code("""
display(plots.rm_table(result))
"""),
    md("""
## Accuracy per precision

The dotted line is chance (0.5).
"""),
    code("""
fig = plots.plot_rm_accuracy(result)
display(fig)
saved = plots.save_figure(fig, paths.figures, "rm_accuracy")
print("Saved", ", ".join(p.name for p in saved))
"""),
    md("""
## What each precision costs

Memory footprint of the model, training time and scoring throughput on the CPU.
"""),
    code("""
fig = plots.plot_rm_costs(result)
display(fig)
saved = plots.save_figure(fig, paths.figures, "rm_costs")
print("Saved", ", ".join(p.name for p in saved))
"""),
    md("""
## Training loss

The pairwise loss per logged step; ln 2 is where a model that cannot tell the replies apart sits.
"""),
    code("""
display(show.plot_rm_loss(result))
"""),
    md("""
## Next

Open **`04_PPO_Alignment.ipynb`** to align the SFT policy with PPO against each reward model.
"""),
]

# ---------------------------------------------------------------------------------------------------- 04 PPO
PPO = [
    md("""
# 04 · PPO alignment: what does a quantized reward model cost?

This notebook runs TRL's PPO from the SFT policy against each reward model (bf16, int8, int4) for several
seeds, with the reward model on the CPU and the policy on the GPU (the CPU when there is none). Every policy is
then judged by the same reward model, the *judge*, so that the precisions are compared on one scale: the
difference to the bf16 run is the **quantization tax**.

**Writes:** `models/ppo_policy_{bf16,int8,int4}/`, `results/ppo_experiment_results.json`, and every figure in
`results/figures/` (PNG and PDF, redrawn from the result files alone).
"""),
    params(),
    code(setup_cell("from tinyrlhf import plots, ppo")),
    md("""
## Run PPO against each reward model

Progress bars show each precision and seed in turn. A precision or seed that fails is recorded with its
reason and the rest go on.
"""),
    code("""
result = ppo.run_ppo_experiments(profile, paths, force=FORCE)
print(show.reuse_note(result))
"""),
    md("""
## The headline: final reward per reward-model precision

Judged reward of the final policies, mean ± standard deviation over seeds; the gain over the SFT policy, the
tax relative to bf16, the KL to the SFT policy and the win rate against it.
"""),
    code("""
display(plots.summary_table(result))
for line in show.final_reward_lines(result):
    print(line)
"""),
    md("""
## Every policy under every reward model

Rows are policies, columns the reward model that scores their responses. A policy that looks good only under
its own reward model has learned that model's quirks rather than the preference.
"""),
    code("""
display(show.cross_matrix_table(result))
"""),
    md("""
## Sample responses

The SFT policy and the first seed of each PPO policy answering the same evaluation prompts, with the judge's
reward.
"""),
    code("""
display(show.wrap(show.samples_table(result, n=3)))
"""),
    md("""
## Figures

Every figure is redrawn from `results/rm_results.json` and `results/ppo_experiment_results.json` and saved as
PNG and PDF in `results/figures/`.
"""),
    code("""
figs = plots.draw_all(paths.results, paths.figures)
show.show_pngs(figs)
"""),
    md("""
## Next

That is the whole pipeline. The figures for a paper can be redrawn on any machine from the result files:
`python -m tinyrlhf.plots results/ paper/figures`. To rerun everything headless:
`python -m tinyrlhf.run_notebooks` (add `--profile cpu` for the quick run).
"""),
]

NOTEBOOKS = {
    "00_Setup.ipynb": SETUP,
    "01_Data_Preparation.ipynb": DATA,
    "02_SFT_Finetuning.ipynb": SFT,
    "03_Reward_Modeling.ipynb": RM,
    "04_PPO_Alignment.ipynb": PPO,
}


def build(cells: list[tuple[str, str]], stem: str) -> nbformat.NotebookNode:
    """A notebook from (kind, source) cells, with fixed cell ids and no outputs."""
    nb = new_notebook(metadata={"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}})
    for i, (kind, source) in enumerate(cells):
        cell_id = f"{stem.split('_')[0]}-{i:02d}"
        if kind == "markdown":
            cell = new_markdown_cell(source, id=cell_id)
        else:
            cell = new_code_cell(source, id=cell_id)
            if kind == "parameters":
                cell.metadata["tags"] = [PARAMETERS_TAG]
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def write_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, cells in NOTEBOOKS.items():
        path = out_dir / name
        nbformat.write(build(cells, Path(name).stem), path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO, help="folder to write the notebooks into (default: repo root)")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
