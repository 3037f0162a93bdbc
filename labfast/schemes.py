"""Landmark schemes: point count, LAB boundaries, flip permutation and NME normaliser.

A scheme is plain data. ``boundaries`` maps a boundary name to the landmark indices (0-based)
that the boundary curve passes through, in order; ``num_boundaries`` (K) is its length.

Sources (see ../shared/LAB_NOTES.md): the 13 boundaries of LAB (Wu et al., CVPR 2018, Sec. 3.1)
in the 68- and 98-point splits used by the public re-implementations. WFLW eyebrows are closed
outlines (upper edge then back along the lower edge) so that WFLW also has 13 boundaries, as the
paper counts. COFW-29 and AFLW-19 have too few points for all 13 lines: they get the lines
their points support (LAB's own best COFW/AFLW results use boundaries learnt on 300-W instead,
the cross-data-set setting of ``labfast train``).

Normalisers: inter-ocular (outer eye corners) for 300-W and WFLW, inter-pupil (points 16, 17)
for COFW (RCPR's protocol; note that HRNet's evaluation code normalises COFW by the outer eye
corners 8 and 9 instead, so its COFW figures are on another scale), and the face box size
``sqrt(w * h)`` for AFLW.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Scheme:
    """A landmark annotation scheme.

    Attributes:
        name: registry name (``"wflw"``, ``"300w"``, ``"cofw"``, ``"aflw"``).
        num_points: L, landmarks per face.
        boundaries: ordered mapping boundary name -> landmark indices along the curve.
        flip_permutation: after a horizontal flip, point ``i`` becomes point ``flip_permutation[i]``.
        normalizer: ``"inter_ocular"``, ``"inter_pupil"`` or ``"box"``.
        normalizer_points: the two landmark indices whose distance normalises the error
            (empty for ``"box"``).
    """

    name: str
    num_points: int
    boundaries: Mapping[str, tuple[int, ...]]
    flip_permutation: tuple[int, ...]
    normalizer: str
    normalizer_points: tuple[int, ...] = field(default=())

    @property
    def num_boundaries(self) -> int:
        return len(self.boundaries)

    @property
    def boundary_names(self) -> tuple[str, ...]:
        return tuple(self.boundaries)


def _mirror_pairs(num_points: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    """Permutation from left/right pairs; unlisted points map to themselves."""
    permutation = list(range(num_points))
    for left, right in pairs:
        permutation[left], permutation[right] = right, left
    return tuple(permutation)


def _span(first: int, last: int) -> tuple[int, ...]:
    """Inclusive index range ``first..last``, counting down when ``last < first``."""
    step = 1 if last >= first else -1
    return tuple(range(first, last + step, step))


_300W = Scheme(
    name="300w",
    num_points=68,
    boundaries={
        "contour": _span(0, 16),
        "left_eyebrow": _span(17, 21),
        "right_eyebrow": _span(22, 26),
        "nose_bridge": _span(27, 30),
        "nose_boundary": _span(31, 35),
        "left_upper_eyelid": (36, 37, 38, 39),
        "left_lower_eyelid": (36, 41, 40, 39),
        "right_upper_eyelid": (42, 43, 44, 45),
        "right_lower_eyelid": (42, 47, 46, 45),
        "upper_lip_upper_side": _span(48, 54),
        "upper_lip_lower_side": _span(60, 64),
        "lower_lip_upper_side": (60, 67, 66, 65, 64),
        "lower_lip_lower_side": (48, 59, 58, 57, 56, 55, 54),
    },
    flip_permutation=_mirror_pairs(
        68,
        [(i, 16 - i) for i in range(8)]
        + [(17 + i, 26 - i) for i in range(5)]
        + [(31, 35), (32, 34)]
        + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
        + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]
        + [(60, 64), (61, 63), (65, 67)],
    ),
    normalizer="inter_ocular",
    normalizer_points=(36, 45),
)

_WFLW = Scheme(
    name="wflw",
    num_points=98,
    boundaries={
        "contour": _span(0, 32),
        "left_eyebrow": _span(33, 41) + (33,),
        "right_eyebrow": _span(42, 50) + (42,),
        "nose_bridge": _span(51, 54),
        "nose_boundary": _span(55, 59),
        "left_upper_eyelid": _span(60, 64),
        "left_lower_eyelid": (60, 67, 66, 65, 64),
        "right_upper_eyelid": _span(68, 72),
        "right_lower_eyelid": (68, 75, 74, 73, 72),
        "upper_lip_upper_side": _span(76, 82),
        "upper_lip_lower_side": _span(88, 92),
        "lower_lip_upper_side": (88, 95, 94, 93, 92),
        "lower_lip_lower_side": (76,) + _span(87, 82),
    },
    flip_permutation=_mirror_pairs(
        98,
        [(i, 32 - i) for i in range(16)]
        + [(33 + i, 46 - i) for i in range(5)]
        + [(38 + i, 50 - i) for i in range(4)]
        + [(55, 59), (56, 58)]
        + [(60 + i, 72 - i) for i in range(5)]
        + [(65, 75), (66, 74), (67, 73)]
        + [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86)]
        + [(88, 92), (89, 91), (93, 95)]
        + [(96, 97)],
    ),
    normalizer="inter_ocular",
    normalizer_points=(60, 72),
)

# COFW-29 (RCPR order, 0-based): eyebrows 0/1 outer, 2/3 inner, 4/6 upper, 5/7 lower middle;
# eyes 8/9 outer, 10/11 inner, 12/14 upper, 13/15 lower lid; 16/17 pupils; nose 18/19 wings,
# 20 tip, 21 base; mouth 22/23 corners, 24-27 lip edges top to bottom; 28 chin.
_COFW = Scheme(
    name="cofw",
    num_points=29,
    boundaries={
        "left_eyebrow": (0, 4, 2, 5, 0),
        "right_eyebrow": (1, 6, 3, 7, 1),
        "nose_boundary": (18, 21, 19),
        "left_upper_eyelid": (8, 12, 10),
        "left_lower_eyelid": (8, 13, 10),
        "right_upper_eyelid": (11, 14, 9),
        "right_lower_eyelid": (11, 15, 9),
        "upper_lip_upper_side": (22, 24, 23),
        "upper_lip_lower_side": (22, 25, 23),
        "lower_lip_upper_side": (22, 26, 23),
        "lower_lip_lower_side": (22, 27, 23),
    },
    flip_permutation=_mirror_pairs(
        29,
        [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17),
         (18, 19), (22, 23)],
    ),
    normalizer="inter_pupil",
    normalizer_points=(16, 17),
)

# AFLW-19 (0-based): 0-2 left eyebrow, 3-5 right eyebrow, 6-8 left eye, 9-11 right eye,
# 12-14 nose, 15-17 mouth, 18 chin.
_AFLW = Scheme(
    name="aflw",
    num_points=19,
    boundaries={
        "left_eyebrow": (0, 1, 2),
        "right_eyebrow": (3, 4, 5),
        "left_eye": (6, 7, 8),
        "right_eye": (9, 10, 11),
        "nose_boundary": (12, 13, 14),
        "mouth": (15, 16, 17),
    },
    flip_permutation=_mirror_pairs(
        19, [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)]
    ),
    normalizer="box",
)

_REGISTRY = {scheme.name: scheme for scheme in (_WFLW, _300W, _COFW, _AFLW)}


def names() -> tuple[str, ...]:
    """Registered scheme names."""
    return tuple(_REGISTRY)


def get(name: str | Scheme) -> Scheme:
    """Look up a scheme by name (``"wflw"``, ``"300w"``, ``"cofw"``, ``"aflw"``)."""
    if isinstance(name, Scheme):
        return name
    key = name.lower().replace("-", "")
    if key not in _REGISTRY:
        raise ValueError(f"unknown landmark scheme {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]
