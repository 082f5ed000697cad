"""Generate the README's headline (figure and table of taxes) from a run's results.

Usage:
    .venv/bin/python scripts/readme_results.py --from RESULTS_DIR   # snapshot a finished `make run` into docs/results/
    .venv/bin/python scripts/readme_results.py                      # redraw from the committed snapshot

Writes docs/results/{bon_results,ppo_experiment_results}.json (with --from), docs/figures/headline.{png,pdf} and the
README between its headline markers (tinyrlhf.headline). tests/test_readme.py checks they agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyrlhf.headline import regenerate  # noqa: E402  (the repository's package, not an installed copy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="results", type=Path, help="a finished run's results/ folder to snapshot")
    args = parser.parse_args(argv)
    try:
        written = regenerate(ROOT, args.results)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(1, f"error: {e}\n")
    for name, path in written.items():
        print(f"{name}: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
