"""Compare the run folders of benchmarks/audit_any_model.sh: one model through every source, as a Markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def main(out: Path) -> None:
    rows = []
    native = pd.read_csv(out / "clean-native" / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    for name in ("clean-native", "clean-onnx", "clean-http"):
        pred = pd.read_csv(out / name / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
        metrics = json.loads((out / name / "metrics.json").read_text())
        same = int((pred["pred"] == native.loc[pred.index, "pred"]).sum())
        rows.append(f"| {name} | {metrics['accuracy']['estimate']:.4f} | {same}/{len(pred)} same as native |")
    print("| clean | accuracy | predictions |\n|---|---|---|\n" + "\n".join(rows))
    a = pd.read_csv(out / "pgd-native" / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    b = pd.read_csv(out / "pgd-onnx2torch" / "predictions.csv", dtype={"image_id": str}).set_index("image_id")
    fa = json.loads((out / "pgd-native" / "attack_metrics.json").read_text())
    fb = json.loads((out / "pgd-onnx2torch" / "attack_metrics.json").read_text())
    same = int((a["adv_pred"] == b.loc[a.index, "adv_pred"]).sum())
    print(
        f"\nPGD-20: all → nv native {fa['fooling_ratio_all']['estimate']:.4f}, onnx2torch "
        f"{fb['fooling_ratio_all']['estimate']:.4f}; adversarial predictions equal on {same}/{len(a)} images"
    )
    audit = json.loads((out / "audit-http" / "audit.json").read_text())
    server = json.loads((out / "server-stats.json").read_text())
    t, atk = audit["timing"], audit["attack"]
    worst = atk["fooling_ratio"][atk["worst_class"]]["estimate"] if atk["worst_class"] else float("nan")
    print(
        f"\naudit over HTTP ({audit['threat_model']}, {atk['method']}, {atk['eps_255']:g}/255, n = {atk['n']}): "
        f"worst class {atk['worst_class']} {worst:.4f}; wall {t['wall_s']:.1f} s, model {t['model_s']:.1f} s, "
        f"dermadv {t['dermadv_s']:.1f} s ({t['dermadv_share']:.1%}); queries counted by dermadv {t['queries']}, "
        f"by the server {server['queries']}"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
