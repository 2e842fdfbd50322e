"""Markdown tables for the command lines' reports (benchmark, compile gate, roofline)."""

from __future__ import annotations


def markdown_table(headers, rows) -> str:
    """A markdown table padded to its widest cells: the first column left-aligned, the others
    right-aligned (they hold numbers), so it reads the same in a terminal and in BENCHMARKS.md."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def row(cols) -> str:
        cells = (str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([row(headers), rule, *(row(r) for r in rows)])
