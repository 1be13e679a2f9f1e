"""The goals of the performance issue (issue 7) in one table, from the rows the benchmarks of
one ``bench/run`` appended (``--summary FILE``, JSON lines); rows without a goal (the
scale-out figures, verdict "-") are listed but not counted.

    .venv/bin/python bench/summary.py FILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: bench/summary.py FILE")
    path = Path(sys.argv[1])
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    met = sum(1 for r in rows if r.get("verdict") == "met")
    # Rows without a goal (the scale-out figures) are shown, not counted.
    goals = [r for r in rows if r.get("verdict") != "-"]
    print("| measurement | figure | unit | baseline (same run) | ratio | goal | verdict |")
    print("|---|---:|---|---|---|---|---|")
    for r in rows:
        verdict = r.get("verdict", "")
        shown = f"**{verdict}**" if verdict.startswith("NOT") else verdict
        print(
            f"| {r.get('name', '')} | {r.get('figure', '')} | {r.get('unit', '')} "
            f"| {r.get('baseline', '')} | {r.get('ratio', '')} | {r.get('goal', '')} | {shown} |"
        )
    print()
    print(f"{met} of {len(goals)} goals met")


if __name__ == "__main__":
    main()
