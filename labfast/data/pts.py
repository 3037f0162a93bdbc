"""iBUG ``.pts`` landmark files, with or without the header.

The standard form is::

    version: 1
    n_points: 68
    {
    x y
    ...
    }

Some distributions (the HELEN and AFW copies of 300-W) ship only the ``x y`` lines. Both are
accepted. Values are returned **as written**: iBUG files are 1-based (MATLAB convention), so a
caller wanting labfast's 0-based pixel centres subtracts 1 (``read_300w`` does).
"""
from __future__ import annotations

import os

import numpy as np

from ._parse import AnnotationError, decode_line, parse_floats, read_lines, where


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.pts`` file -> ``(L, 2)`` float32, values as in the file (1-based for iBUG).

    Raises ``AnnotationError`` naming the file and line for bytes that are not UTF-8, a line that
    is not two numbers, a NaN / infinite value, a header whose ``n_points`` disagrees with the point lines, a missing
    ``}``, or text after it.
    """
    lines = [decode_line(raw, path, number) for number, raw in enumerate(read_lines(path), start=1)]
    numbered = [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise AnnotationError(f"{where(path)}: empty .pts file")

    declared: int | None = None
    body = numbered
    if ":" in numbered[0][1] or numbered[0][1] == "{":
        header_end = next((i for i, (_, text) in enumerate(numbered) if text == "{"), None)
        if header_end is None:
            raise AnnotationError(f"{where(path, numbered[0][0])}: header without an opening '{{'")
        for number, text in numbered[:header_end]:
            key, _, value = text.partition(":")
            if key.strip() == "n_points":
                try:
                    declared = int(value)
                except ValueError:
                    raise AnnotationError(f"{where(path, number)}: bad n_points {value.strip()!r}") from None
        close = next((i for i, (_, text) in enumerate(numbered) if text == "}"), None)
        if close is None:
            raise AnnotationError(f"{where(path)}: no closing '}}'")
        if close != len(numbered) - 1:
            number, text = numbered[close + 1]
            raise AnnotationError(f"{where(path, number)}: unexpected text after '}}': {text!r}")
        body = numbered[header_end + 1:close]

    points = np.empty((len(body), 2), dtype=np.float64)
    for row, (number, text) in enumerate(body):
        tokens = text.split()
        if len(tokens) != 2:
            raise AnnotationError(f"{where(path, number)}: expected 2 values 'x y', got {len(tokens)}: {text!r}")
        points[row] = parse_floats(tokens, path, number, "coordinate")
    if declared is not None and declared != len(points):
        raise AnnotationError(f"{where(path)}: header says n_points {declared} but {len(points)} points follow")
    if len(points) == 0:
        raise AnnotationError(f"{where(path)}: no points")
    return points.astype(np.float32)


def write_pts(path: str | os.PathLike, points: np.ndarray, header: bool = True) -> None:
    """Write ``(L, 2)`` points as given (pass 1-based values for an iBUG file), 3 decimals."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (L, 2), got {points.shape}")
    lines = [f"{x:.3f} {y:.3f}" for x, y in points]
    if header:
        lines = ["version: 1", f"n_points: {len(points)}", "{", *lines, "}"]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
