"""Tables: results in the seed README's layout (one table per metric, a row per method, the
average and one column per category), Markdown tables from rows, the number formats they use."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..system.atomic import write_text_atomic

#: (metrics key, table title) in the order the README shows them.
TABLE_METRICS = (("image_auroc", "Image AUC"), ("pixel_auroc", "Pixel AUC"), ("pixel_f1_max", "Pixel F1"))

Results = Mapping[str, Mapping[str, Mapping[str, float | None]]]  # method -> category -> metrics


def percent(value: float | None, digits: int = 1, missing: str = "") -> str:
    """A fraction as a percentage without the sign (``0.9812 -> '98.1'``); ``missing`` for None."""
    return missing if value is None else f"{100 * value:.{digits}f}"


def _cell(value: float | None) -> str:
    return percent(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table from dicts: columns in order of first appearance, a missing or None value
    left empty, floats with 4 significant digits."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_plain(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _average(values: list[float | None]) -> float | None:
    """Mean over categories, or None when any is missing (an average over a subset would mislead)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def metric_table(results: Results, key: str, title: str, categories: list[str]) -> str:
    """One markdown table: ``| title | Avg | cat1 | cat2 | ...`` with a row per method (in %)."""
    lines = [f"| {title} | Avg | " + " | ".join(categories) + " |", "|---" * (len(categories) + 2) + "|"]
    for method, per_category in results.items():
        values = [per_category.get(c, {}).get(key) for c in categories]
        lines.append(f"| {method} | {_cell(_average(values))} | " + " | ".join(_cell(v) for v in values) + " |")
    return "\n".join(lines)


def summary_markdown(results: Results, heading: str, notes: list[str] | None = None,
                     failures: Mapping[str, str] | None = None) -> str:
    """All three tables, notes on how they were made, and any failed categories."""
    categories = sorted({c for per in results.values() for c in per} | set(failures or {}))
    parts = [f"# {heading}", ""]
    parts += [f"- {n}" for n in notes or []]
    for key, title in TABLE_METRICS:
        parts += ["", f"## {title} (%)", "", metric_table(results, key, title, categories)]
    if failures:
        parts += ["", "## Failed categories", ""] + [f"- {c}: {why}" for c, why in sorted(failures.items())]
    return "\n".join(parts) + "\n"


def write_summary(output_dir: Path, results: Results, heading: str, notes: list[str] | None = None,
                  failures: Mapping[str, str] | None = None) -> Path:
    """Write ``summary.md`` and ``summary.json`` atomically into ``output_dir``."""
    summary = {"results": results, "failures": failures or {}}
    write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2))
    return write_text_atomic(output_dir / "summary.md", summary_markdown(results, heading, notes, failures))
