"""The table of benchmarks/demo_conditions.sh: one row per condition, read from its `dermadv reproduce` run folder.

    python benchmarks/demo_table.py OUT      # prints Markdown

Per condition: wall seconds (the whole command), the run's status, clean → adversarial accuracy, the worst-class
fooling ratio to the target (with the class and its count) and whether every class reached 99%.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dermadv.evaluation.attack_metrics import AttackMetrics


def main(out: Path) -> None:
    print("| condition | wall time | status | accuracy clean → adversarial | worst class | every class ≥ 99% |")
    print("|---|---|---|---|---|---|")
    for run in sorted(p for p in out.iterdir() if p.is_dir() and (out / f"{p.name}.seconds").exists()):
        seconds = (run.parent / f"{run.name}.seconds").read_text().strip()
        manifest = json.loads((run / "manifest.json").read_text())
        metrics_file = run / "adv-test" / "attack_metrics.json"
        if not metrics_file.exists():
            print(f"| {run.name} | {seconds} s | {manifest.get('status')} | – | – | – |")
            continue
        m = AttackMetrics.from_dict(json.loads(metrics_file.read_text()))
        worst = m.worst_class_fooling_ratio
        n = m.per_class[m.worst_class].n if m.worst_class else 0
        share = worst.estimate if worst is not None else float("nan")
        print(
            f"| {run.name} | {int(seconds) // 60} min {int(seconds) % 60} s | {manifest.get('status')} "
            f"| {m.accuracy_clean.estimate:.1%} → {m.accuracy_adv.estimate:.1%} "
            f"| {m.worst_class} {share:.1%} ({round(share * n)}/{n}) | {'yes' if share >= 0.99 else 'no'} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
