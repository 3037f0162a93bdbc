"""Shared helpers for the annotation readers: number parsing with file/line errors, and the
``strict=False`` skip-and-count policy."""
from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import numpy as np

logger = logging.getLogger("labfast.data")


#: Largest magnitude of an annotation value: far beyond any image's pixels, and small enough that
#: landmarks, boxes and their sums stay finite in the float32 samples hold (3.4e38 does not).
MAX_VALUE = 1e8


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file and, where there is one, the line."""


def where(path: str | os.PathLike, line: int | None = None) -> str:
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)


def read_lines(path: str | os.PathLike) -> list[bytes]:
    """The raw lines of an annotation file; decode each with :func:`decode_line`, so that one line
    that is not UTF-8 is one bad entry, not an unreadable file."""
    with open(path, "rb") as handle:
        return handle.read().splitlines()


def decode_line(raw: bytes, path: str | os.PathLike, line: int) -> str:
    """A line as UTF-8 text; other bytes raise ``AnnotationError`` naming the file and line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{where(path, line)}: not UTF-8 text (byte {error.start} of the line: {error.reason})") from None


def parse_floats(tokens: Sequence[str], path: str | os.PathLike, line: int | None, what: str) -> np.ndarray:
    """Tokens -> float64 array; a non-numeric, NaN or infinite value raises naming file, line, value."""
    values = np.empty(len(tokens), dtype=np.float64)
    for position, token in enumerate(tokens):
        try:
            value = float(token)
        except ValueError:
            raise AnnotationError(
                f"{where(path, line)}: {what} value {position} is not a number: {token!r}"
            ) from None
        if not math.isfinite(value):
            raise AnnotationError(f"{where(path, line)}: {what} value {position} is {token!r}")
        if abs(value) > MAX_VALUE:
            raise AnnotationError(f"{where(path, line)}: {what} value {position} is {token!r}, beyond ±{MAX_VALUE:g}: not a pixel position")
        values[position] = value
    return values


def parse_flag(token: str, path: str | os.PathLike, line: int | None, name: str) -> bool:
    if token not in ("0", "1"):
        raise AnnotationError(f"{where(path, line)}: attribute {name!r} must be 0 or 1, got {token!r}")
    return token == "1"


def check_image(image_path: str, path: str | os.PathLike, line: int | None) -> None:
    if not os.path.isfile(image_path):
        raise AnnotationError(f"{where(path, line)}: image {image_path} does not exist")


class Skipper:
    """Collects bad entries when ``strict=False`` (re-raises when strict) and logs one summary."""

    def __init__(self, strict: bool, source: str | os.PathLike):
        self.strict = strict
        self.source = os.fspath(source)
        self.errors: list[str] = []

    def skip(self, error: AnnotationError) -> None:
        if self.strict:
            raise error
        self.errors.append(str(error))

    def report(self) -> None:
        if self.errors:
            logger.warning(
                "skipped %d bad entries in %s (strict=False); first: %s",
                len(self.errors), self.source, self.errors[0],
            )
