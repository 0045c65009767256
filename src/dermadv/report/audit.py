"""The audit's report page, rendered from ``audit.json`` and the attack's per-class query table (pure: dicts in,
Markdown out)."""

from __future__ import annotations

from typing import Any

from dermadv.evaluation.attack_info import QueryCount
from dermadv.paper import PAPER


def _pct(interval: dict[str, Any] | None) -> str:
    if not interval:
        return "–"
    return f"{interval['estimate']:.1%} ({interval['low']:.1%}–{interval['high']:.1%})"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def render_queries_markdown(table: dict[str, Any], *, figure: str | None = None) -> list[str]:
    """The "success against queries" section: ``table`` as :meth:`dermadv.report.figures.QueryCurves.table`
    returns it, and the figure's file name beside ``audit.md``."""
    marks, budget, target = table["marks"], table["budget"], table["target"]
    fooled = f"predicted `{target}`" if target is not None else "misclassified"
    lines = ["", "## Success against queries", ""]
    if figure:
        lines += [f"![Share of each true class {fooled.replace('`', '')} within q queries]({figure})", ""]
    lines += [
        "| true class | n | "
        + " | ".join(f"fooled within {q}" for q in marks)
        + f" | fooled within the budget ({budget}) "
        "| median queries among successes |",
        "|---|---:|" + "---:|" * (len(marks) + 2),
    ]
    for row in table["classes"]:
        median = row["median_queries"]
        cells = [_share(row["within"][q]) for q in marks] + [
            _share(row["fooled"]),
            "–" if median is None else f"{median:g}",
        ]
        lines.append(f"| {row['label']} | {row['n']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Fooled: {fooled} on the saved PNG; queries: what the attack spent on the image (it stops at success). "
        f"The budget was {budget} queries per image (–: beyond it). The target class is left out.",
    ]
    return lines


def render_audit_markdown(
    audit: dict[str, Any], *, query_table: dict[str, Any] | None = None, queries_figure: str | None = None
) -> str:
    """The audit as Markdown: model, threat model, check, clean accuracy, the paper's table, checks, timing; for a
    query-based attack, ``query_table`` (see :func:`render_queries_markdown`) adds success against queries."""
    model, attack, clean, timing = audit["model"], audit["attack"], audit["clean"], audit["timing"]
    queries = QueryCount.from_dict(attack.get("queries") or {})  # attack.json's, as the audit copied it
    lines = [
        f"# Adversarial audit of `{model['spec']}`",
        "",
        f"- model: {model['kind']}{' with weights ' + model['weights'] if model.get('weights') else ''}, "
        f"fingerprint `{model['fingerprint']}`, input {model['image_size'] or 'stored size'}, "
        f"classes {', '.join(model['classes'])}",
        f"- threat model: **{audit['threat_model']}** — {audit['why']}",
        f"- model check: {audit['check']['verdict']}",
        f"- clean accuracy ({clean['n']} images): {_pct(clean['accuracy'])}, balanced {clean['balanced_accuracy']:.3f}",
        "",
        f"## Targeted to `{attack['target']}` at {attack['eps_255']:g}/255 ({attack['method']}, n = {attack['n']})",
        "",
        "| true class | fooling ratio (95% CI) | paper |",
        "|---|---|---|",
    ]
    for cls, iv in attack["fooling_ratio"].items():
        lines.append(f"| {cls} | {_pct(iv)} | {PAPER['fooling_ratio'] if cls != attack['target'] else '–'} |")
    lines += [
        "",
        f"Accuracy clean {_pct(attack['accuracy_clean'])} → adversarial {_pct(attack['accuracy_adv'])}, "
        f"McNemar exact P = {attack['mcnemar_p']:.2g} (paper: {PAPER['accuracy_clean']} → {PAPER['accuracy_adv']}, "
        f"{PAPER['mcnemar_p']}). Worst class: {attack['worst_class']}.",
    ]
    if queries.attack_queries is not None:
        lines.append(
            f"Queries spent by the attack: {queries.attack_queries} "
            f"({queries.attack_queries / max(1, attack['n']):.1f} per image); answered by the model in all: "
            f"{queries.queries}."
        )
    if query_table is not None:
        lines += render_queries_markdown(query_table, figure=queries_figure)
    lines += ["", "## Reliability checks", ""]
    lines += [f"- **{c['status']}** {c['name']}: {c['figure']} — {c['detail']}" for c in audit["checks"]]
    lines += [
        "",
        "## Time",
        "",
        f"Wall {timing['wall_s']:.1f} s: the model {timing['model_s']:.1f} s, dermadv {timing['dermadv_s']:.1f} s "
        f"({timing['dermadv_share']:.1%}); {timing['queries']} images answered by the model.",
        "",
    ]
    return "\n".join(lines)
