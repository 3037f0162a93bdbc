"""The result of ``labfast bench`` as text (one fixed-width table, device and versions above it)
and as a JSON file."""
from __future__ import annotations

import json
import os
from pathlib import Path


def _si(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.{digits}f}{suffix}"
    return f"{value:.{digits}f}"


HEADER = ("section", "case", "backend", "dtype", "batch", "throughput", "median ms", "p99 ms",
          "vs ref", "vs opencv", "achieved", "% peak", "peak mem", "note")


def _cells(row: dict) -> tuple[str, ...]:
    """One row's cells under ``HEADER``; a row not measured gives its status and reason as its note."""
    named = (row["section"], row["case"], row["backend"], row["dtype"], str(row["batch"]))
    if row["status"] != "ok":
        return (*named, *["-"] * 8, f"{row['status']}: {row['reason']}")
    achieved = (f"{row['tflops']:.3g} TFLOP/s" if row["tflops"] else
                f"{row['gbps']:.3g} GB/s" if row["gbps"] else "-")
    return (
        *named,
        f"{_si(row['throughput'])} {row['unit']}", f"{row['median_ms']:.3g}", f"{row['p99_ms']:.3g}",
        f"{row['vs_reference']:.2f}x" if row["vs_reference"] is not None else "-",
        f"{row['vs_opencv']:.1f}x" if row["vs_opencv"] is not None else "-",
        achieved,
        f"{100 * row['peak_share']:.1f}% of {row['peak_name']}" if row["peak_share"] is not None else "n/a",
        f"{_si(row['memory_bytes'])}B" if row["memory_bytes"] is not None else "n/a",
        row["note"] or "",
    )


def format_table(result: dict) -> str:
    """The rows as one fixed-width table, with the device and versions above it."""
    device, versions, git = result["device"], result["versions"], result["git"]
    lines = [
        f"device: {device['name']} ({device['type']}), driver {device['driver']}; torch {versions['torch']}, "
        f"triton {versions['triton']}; {result['date']}; commit {git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}",
    ]
    table = [HEADER, *(_cells(row) for row in result["rows"])]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    for index, line in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    if result["fast_path_fallbacks"]:
        lines.append("fast-path fallbacks seen: " + " | ".join(result["fast_path_fallbacks"]))
    if device["peak"] is None:
        lines.append(device["peak_note"])
    return "\n".join(lines)


def write_json(path: Path, result: dict) -> None:
    """Atomically: a reader (or a kill) never meets half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, path)
