"""The table of benchmarks/blackbox_figures.sh, read from its run folders: one row per attack run.

    python benchmarks/blackbox_table.py OUT        # prints Markdown; writes OUT/table.md and OUT/table.json

Per run: threat model, method, budget, images, worst-class fooling ratio (images of the class moved to the target,
the target's own class left out), all images → target, the median queries of the images moved (their true class
and their clean prediction not the target) and the share of non-target images at the target within 100 queries, the attack's queries counted by dermadv and by the server, and
the wall time of the attack.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd


def row(folder: Path) -> dict[str, Any] | None:
    info_path, metrics_path = folder / "attack.json", folder / "attack_metrics.json"
    manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}
    if not metrics_path.exists() or manifest.get("status") != "complete":
        return None
    info, metrics = json.loads(info_path.read_text()), json.loads(metrics_path.read_text())
    pred = pd.read_csv(folder / "predictions.csv", dtype={"image_id": str})
    target = info["target"]
    others = pred[pred["label"] != target]
    # the images the attack had to move: not of the target class and not called the target before the attack (an
    # image called the target when clean succeeds on the query that scores it, and says nothing of the search)
    moved = others[(others["adv_pred"] == target) & (others["clean_pred"] != target)]
    per_class = {
        c: float((g["adv_pred"] == target).mean()) for c, g in others.groupby("label")
    }  # the target's class left out: its images are "fooled" before any query
    worst = min(per_class, key=lambda c: per_class[c])
    queries = info.get("queries") or {}
    server_file = folder.with_name(folder.name + ".server.json")
    server = json.loads(server_file.read_text()) if server_file.exists() else {}
    has_q = "queries" in pred and pred["queries"].notna().any()
    return {
        "run": folder.name,
        "threat_model": info.get("threat_model"),
        "method": info["method"],
        "eps_255": info.get("eps_255"),
        "n": int(len(pred)),
        "n_not_target": int(len(others)),
        "worst_class": worst,
        "worst_class_fooling": per_class[worst],
        "worst_class_n": int((others["label"] == worst).sum()),
        "fooling_all": float(metrics["fooling_ratio_all"]["estimate"]),
        "median_queries_moved": float(moved["queries"].median()) if has_q and len(moved) else None,
        "already_target": int((others["clean_pred"] == target).sum()),
        "moved_within_100": float(((others["adv_pred"] == target) & (others["queries"] <= 100)).mean())
        if has_q
        else None,
        "attack_queries": queries.get("attack_queries"),
        "dermadv_queries": queries.get("queries"),
        "server_queries": server.get("queries"),
        "wall_s": queries.get("wall_seconds"),
        "per_class": per_class,
    }


def fmt(value: Any, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def main(out: Path) -> None:
    rows = [r for f in sorted(out.iterdir()) if f.is_dir() and (r := row(f)) is not None]
    lines = [
        "| run | threat model | method | ε | n | worst class | all → nv | median queries (moved) | moved ≤ 100 q "
        "| queries: dermadv / server | attack wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['threat_model']} | {r['method']} | {fmt(r['eps_255'], 'g')}/255 | {r['n']} "
            f"| {r['worst_class']} {r['worst_class_fooling']:.1%} (n={r['worst_class_n']}) | {r['fooling_all']:.1%} "
            f"| {fmt(r['median_queries_moved'], '.0f')} | {fmt(r['moved_within_100'], '.1%')} "
            f"| {fmt(r['dermadv_queries'])} / {fmt(r['server_queries'])} | {fmt(r['wall_s'], '.0f')} |"
        )
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
