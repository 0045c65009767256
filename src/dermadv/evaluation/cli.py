"""``dermadv evaluate-attack``: the paper's table for an attack output folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    @app.command("evaluate-attack")
    def evaluate_attack(
        folder: Path = typer.Argument(..., help="Output folder of `dermadv attack run`."),
        ci: str = typer.Option("wald", "--ci", help="wald (as the paper), wilson or exact."),
    ) -> None:
        """Accuracy clean/adversarial with CIs, McNemar, fooling ratio per class, imperceptibility."""
        from dermadv.evaluation.attack_eval import evaluate_attack_folder, format_attack_table

        metrics = evaluate_attack_folder(folder, ci_method=ci)  # type: ignore[arg-type]
        Console().print(format_attack_table(metrics))
        typer.echo(f"wrote {folder}/attack_metrics.json, attack_metrics.csv, per_image.csv")
