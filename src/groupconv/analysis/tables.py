"""Plain-text, CSV and JSON output shared by the analysis tables (cost, profile)."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Sequence


def si(value: float, unit: str = "") -> str:
    """Compact number with an SI prefix: 4230479872 -> '4.23G', 0.5 -> '0.5'; exact for small integers."""
    if value is None:
        return ""
    if value == 0:
        return f"0{unit}"
    magnitude = abs(value)
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if magnitude >= scale:
            return f"{value / scale:.3g}{prefix}{unit}"
    if float(value).is_integer():
        return f"{int(value)}{unit}"
    return f"{value:.3g}{unit}"


def shape_text(shape: Sequence[int] | None) -> str:
    return "" if shape is None else "x".join(str(s) for s in shape)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right_align_from: int = 1) -> str:
    """Aligned text table; columns from `right_align_from` on are right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.rjust(w) if i >= right_align_from else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(line(cells[0]))
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _ensure_parent(path: str | os.PathLike) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


def write_csv(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """One row per record; the columns are the first record's keys."""
    _ensure_parent(path)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, document: dict) -> None:
    _ensure_parent(path)
    with open(path, "w") as file:
        json.dump(_json_safe(document), file, indent=1)
        file.write("\n")
