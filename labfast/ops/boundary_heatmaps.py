"""The ground-truth boundary heatmaps of labfast (LAB, Sec. 3.1), made on the model's device.

This op *is* the definition (the training step makes its targets with it), and
``boundary_heatmaps_ref`` below is its plain-PyTorch reference (the fast paths are judged by it;
the tests check it against an independent NumPy oracle of the same definition to 2e-5).
``labfast.boundary.heatmaps`` (rasterise + distance transform) is only the per-face OpenCV raster
baseline the benchmarks compare against; it differs from this by construction (its docstring
has the measured figures).

Each boundary k of a scheme is a list of landmark indices. Its heatmap is

    M_k(p) = exp(-d_k(p)^2 / (2 sigma^2))  if d_k(p) < 3 sigma,  else 0,

``d_k(p)`` the Euclidean distance of pixel centre ``p`` (row i, column j is at x=j, y=i) to the
boundary curve: the interpolating spline through the boundary's points, densified into a polyline.

Curve (``dense_curves``). ``scipy.interpolate.splprep(points, s=0, k=min(3, n-1))`` with its default
parameter, the normalised cumulative chord length ``u``, puts FITPACK's interior knots at
``u[2] .. u[n-3]`` for k=3 (every data parameter except the second and the second-to-last), i.e. the
*not-a-knot* cubic spline; for k=2 with 3 points there is no interior knot, so it is the single
quadratic through them; for 2 points the segment. We solve the same interpolant in moment form
(second derivatives ``M_i`` at the data parameters, one ``(n, n)`` system per curve, batched with
``torch.linalg.solve_ex``, in float64); the tests check it against ``splprep``/``splev``.

Repeated points. FITPACK rejects a zero chord (it would be a 0/0 in the spline). A point within
``REPEATED_POINT_PX`` of its predecessor is dropped, the survivors are compacted to the front with a
stable sort, and each curve carries its own point count ``m``: the rows of the system follow ``m``
(not-a-knot for m >= 4, quadratic for 3, segment for 2, a dot for 1) and rows past ``m`` are identity.
No Python loop over faces: the only loop is over groups of boundaries with the same point count.

Samples. Every boundary gets ``samples_per_boundary(size) = 6 * size + 1`` samples, uniform in ``u``.
Chord-length ``u`` makes the curve's speed ``|dS/du|`` close to its length, so the sample spacing is
at most ``max|dS/du| / (6 * size)`` px: at least 2 samples per pixel of arc length whenever the
curve's speed stays below ``3 * size`` (a face boundary inside the map: the longest, the jaw, runs
along at most three sides of the square). On the real 300-W faces at 64x64 the largest spacing is
checked in the tests (``test_sample_spacing_is_at_most_half_a_pixel_on_real_faces``).

Distance. The exact distance of every pixel centre to the polyline of samples (point-to-segment,
minimum over segments); no rasterised map, no distance transform. The Triton and CUDA kernels fuse
distance, Gaussian and cut; they are forward only (ground truth needs no gradient).

Non-finite landmarks. ``check_finite_landmarks`` rejects NaN and inf before any backend runs,
naming the sample and the landmark: the math would otherwise drop a NaN point like a repeat and
turn an infinite one into an all-zero channel, silently.

Dispatch. ``labfast.ops.backend`` chooses the path (op name ``"boundary_heatmaps"``, forced by
``LABFAST_BACKEND_BOUNDARY_HEATMAPS``): Triton (``labfast.kernels.boundary_heatmaps``) or CUDA
(``csrc/boundary_heatmaps.cu``) for the distance pass. Unlike the other ops, the public function
calls its operator on every path, the reference included: the reference's distance pass reads one
value on the host, which must stay out of a compiled graph (the spline, plain tensor ops without a
host read, runs outside it).

Autocast: not an autocast op; ``dtype`` alone decides the heatmaps' dtype.
"""
from __future__ import annotations

import math

import torch

import labfast.ops.backend as backend
import labfast.ops.cuda_extension as cuda_extension
from labfast.schemes import Scheme, get

OP = "boundary_heatmaps"
FAST_PATHS = ("triton", "cuda")

REPEATED_POINT_PX = 1e-3
"""Consecutive points closer than this (pixels) are one point (chord-length spline needs chords > 0).

Same tolerance as ``labfast.boundary.REPEAT_TOLERANCE``; that raster baseline compares each point
with the last point *kept*, this op with its raw predecessor (no sequential scan): they differ only
on a chain of several steps each under 1e-3 px."""

_ELEMENTS_PER_CHUNK = 1 << 24
"""The reference's distance pass holds about this many pixel x segment pairs at once."""


_INDEX_TABLES: dict[tuple, torch.Tensor] = {}


def index_table(values: tuple, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values)`` (integers or booleans, nested tuples) on ``device``, made once per process.

    A scheme's index tables are constants, but a tensor made from Python values is an upload to
    the device each time it is made, one per table per training step. Tables are kept outside
    inference mode (an inference tensor cannot index a tensor that autograd records). Under
    ``torch.compile`` the table is made in the graph, where it is a constant.
    """
    if torch.compiler.is_compiling():
        return torch.tensor(values, device=device)
    key = (values, torch.device(device))
    table = _INDEX_TABLES.get(key)
    if table is None:
        with torch.inference_mode(False):
            table = _INDEX_TABLES[key] = torch.tensor(values, device=device)
    return table


def samples_per_boundary(size: int) -> int:
    """Samples per densified boundary: ``6 * size + 1`` (spacing <= 0.5 px for speeds up to 3 * size)."""
    return 6 * size + 1


def _spline_samples(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``(B, n, 2)`` points of B curves -> ``(B, num_samples, 2)`` float32 samples, uniform in ``u``.

    The interpolant of ``splprep(s=0, k=min(3, m-1))`` on the chord-length parameter, ``m`` the
    number of points left after dropping repeats (per curve).
    """
    count, n, _ = points.shape
    device = points.device
    # float64: a float32 solve loses ~1e-4 px on curves with uneven spacing; the systems are tiny.
    points = points.double()
    slots = torch.arange(n, device=device)

    # Drop repeats, compact the survivors to the front (stable: order kept).
    keep = torch.ones(count, n, dtype=torch.bool, device=device)
    keep[:, 1:] = (points[:, 1:] - points[:, :-1]).norm(dim=-1) > REPEATED_POINT_PX
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    q = points.gather(1, order.unsqueeze(-1).expand(-1, -1, 2))
    m = keep.sum(dim=1, keepdim=True)  # (B, 1)
    # Work relative to the first point: smaller coordinates, less float32 cancellation.
    origin = q[:, :1]
    q = torch.where((slots < m).unsqueeze(-1), q - origin, torch.zeros_like(q))

    # Chord-length parameter u in [0, 1]; intervals past m - 1 have zero length.
    interval_valid = slots[:-1] < m - 1  # (B, n-1)
    chords = torch.where(interval_valid, (q[:, 1:] - q[:, :-1]).norm(dim=-1), q.new_zeros(()))
    total = chords.sum(dim=1, keepdim=True)
    u = torch.cat([torch.zeros_like(total), chords.cumsum(dim=1)], dim=1) / total.clamp_min(1e-30)
    h = torch.where(interval_valid, u[:, 1:] - u[:, :-1], u.new_ones(()))  # (B, n-1)
    slopes = (q[:, 1:] - q[:, :-1]) / h.unsqueeze(-1)  # (B, n-1, 2), zero past m - 1

    moments = _spline_moments(h, slopes, m, n)  # (B, n, 2)

    # Evaluate: interval i holds t in [u_i, u_{i+1}].
    t = torch.linspace(0.0, 1.0, num_samples, device=device, dtype=torch.float64).expand(count, -1).contiguous()
    interval = torch.searchsorted(u.contiguous(), t, right=True) - 1
    interval = torch.minimum(interval.clamp_min(0), (m - 2).clamp_min(0))
    nxt = (interval + 1).clamp_max(n - 1)

    def at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if values.dim() == 2:
            return values.gather(1, index)
        return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))

    if n > 1:
        h_i = at(h, interval.clamp_max(n - 2)).unsqueeze(-1)
    else:
        h_i = torch.ones(count, num_samples, 1, device=device, dtype=torch.float64)
    # S = A q_i + B q_j + ((A^3 - A) M_i + (B^3 - B) M_j) h^2 / 6, A = (u_j - t) / h, B = 1 - A.
    weight_b = ((t - at(u, interval)).unsqueeze(-1) / h_i).clamp(0.0, 1.0)
    weight_a = 1.0 - weight_b
    m_i, m_j = at(moments, interval), at(moments, nxt)
    samples = (
        weight_a * at(q, interval)
        + weight_b * at(q, nxt)
        + ((weight_a**3 - weight_a) * m_i + (weight_b**3 - weight_b) * m_j) * (h_i * h_i / 6)
    )
    samples = torch.where((m == 1).unsqueeze(-1), q[:, :1].expand_as(samples), samples)
    return (samples + origin).float()


def _spline_moments(h: torch.Tensor, slopes: torch.Tensor, m: torch.Tensor, n: int) -> torch.Tensor:
    """Second derivatives ``(B, n, 2)`` of the interpolating spline at its points.

    Row r of the system (three coefficients at columns ``cols``):
      1 <= r <= m-2:  h[r-1] M[r-1] + 2 (h[r-1] + h[r]) M[r] + h[r] M[r+1] = 6 (slope[r] - slope[r-1])
      r = 0, m-1:     not-a-knot (third derivative continuous at u[1], u[m-2]) for m >= 4;
                      M[0] = M[1] = M[2] for m = 3 (one quadratic); identity for m <= 2 (M = 0)
      r >= m:         identity (padding).
    """
    count = h.shape[0]
    if n <= 2:
        return torch.zeros(count, n, 2, device=h.device, dtype=h.dtype)
    rows = torch.arange(n, device=h.device).expand(count, -1)  # (B, n)
    ones = torch.ones(count, 1, device=h.device, dtype=h.dtype)
    h_before = torch.cat([ones, h], dim=1)  # h[r-1] at r
    h_after = torch.cat([h, ones], dim=1)  # h[r] at r
    zeros = torch.zeros_like(h_before)

    interior = (rows >= 1) & (rows <= m - 2)
    first, last = rows == 0, (rows == m - 1) & (m >= 2)
    cols = torch.stack([rows - 1, rows, rows + 1], dim=-1)
    coefs = torch.stack([h_before, 2 * (h_before + h_after), h_after], dim=-1)
    identity = torch.stack([zeros, torch.ones_like(zeros), zeros], dim=-1)
    coefs = torch.where(interior.unsqueeze(-1), coefs, identity)

    # Row 0 and row m-1 for m >= 4 (not-a-knot) and m == 3 (constant second derivative).
    h0, h1 = h[:, :1], h[:, 1:2]
    m_index = (m - 3).clamp_min(0)
    h_last, h_prev = h.gather(1, (m - 2).clamp(0, n - 2)), h.gather(1, m_index.clamp_max(n - 2))
    not_a_knot = (m >= 4).unsqueeze(-1)
    three = (m == 3).unsqueeze(-1)
    first_coefs = torch.where(not_a_knot, torch.stack([h1, -(h0 + h1), h0], dim=-1),
                              torch.stack([ones, -ones, 0 * ones], dim=-1))
    last_coefs = torch.where(not_a_knot, torch.stack([h_last, -(h_prev + h_last), h_prev], dim=-1),
                             torch.stack([0 * ones, -ones, ones], dim=-1))
    three_columns = torch.arange(3, device=h.device)
    end_cols_first = three_columns.expand(count, 1, 3)
    end_cols_last = m_index.unsqueeze(-1) + three_columns
    special = not_a_knot | three
    coefs = torch.where(first.unsqueeze(-1) & special, first_coefs, coefs)
    coefs = torch.where(last.unsqueeze(-1) & special, last_coefs, coefs)
    cols = torch.where(first.unsqueeze(-1) & special, end_cols_first, cols)
    cols = torch.where(last.unsqueeze(-1) & special, end_cols_last, cols)
    # Identity rows keep zero coefficients off the diagonal, so clamping their columns is harmless.
    matrix = torch.zeros(count, n, n, device=h.device, dtype=h.dtype)
    matrix.scatter_add_(2, cols.clamp(0, n - 1), coefs)

    rhs = torch.zeros(count, n, 2, device=h.device, dtype=h.dtype)
    rhs[:, 1:-1] = 6 * (slopes[:, 1:] - slopes[:, :-1])
    rhs = torch.where(interior.unsqueeze(-1), rhs, torch.zeros_like(rhs))
    # solve_ex: no host sync for an error check; the matrix is non-singular by construction.
    return torch.linalg.solve_ex(matrix, rhs).result


def dense_curves(landmarks: torch.Tensor, scheme: Scheme | str, size: int = 64) -> torch.Tensor:
    """``(N, L, 2)`` landmarks -> ``(N, K, P, 2)`` float32 densified boundary curves, ``P = 6 * size + 1``.

    Boundaries with the same number of points are solved together (one batched solve per count).
    """
    scheme = get(scheme)
    landmarks = landmarks.float()
    num_samples = samples_per_boundary(size)
    count = landmarks.shape[0]
    curves = torch.empty(count, scheme.num_boundaries, num_samples, 2, device=landmarks.device)
    for members, points_of_members in _boundary_groups(scheme):
        points = landmarks[:, index_table(points_of_members, landmarks.device)]  # (N, G, n, 2)
        samples = _spline_samples(points.reshape(-1, len(points_of_members[0]), 2), num_samples)
        curves[:, index_table(members, landmarks.device)] = samples.view(count, len(members), num_samples, 2)
    return curves


def _boundary_groups(scheme: Scheme) -> list[tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]]:
    """The boundaries grouped by point count: ``(boundary numbers, their landmark indices)`` per count."""
    groups: dict[int, list[int]] = {}
    boundaries = [tuple(indices) for indices in scheme.boundaries.values()]
    for k, indices in enumerate(boundaries):
        groups.setdefault(len(indices), []).append(k)
    return [(tuple(members), tuple(boundaries[k] for k in members)) for members in groups.values()]


def squared_distance_ref(curves: torch.Tensor, height: int, width: int, reach: float) -> torch.Tensor:
    """``(N, K, P, 2)`` polylines -> ``(N, K, height, width)`` squared distance of each pixel centre.

    Exact (point-to-segment, minimum over the ``P - 1`` segments) for every pixel within ``reach``
    px of the polyline, ``+inf`` beyond: a segment only visits the window of pixels within
    ``reach`` of it (side ``|b - a| + 2 reach + 2``, clipped to the map) and the minimum is taken
    with ``scatter_reduce``. With ``reach = 3 sigma`` the heatmap is the same as with the distance
    of every pixel to every segment, at ~1/60 of the work at 64x64 (the longest segment sets the
    window, read with one host sync).

    Point-to-segment: ``t = clamp(<p - a, b - a> / |b - a|^2, 0, 1)``, ``d^2 = |p - a - t (b - a)|^2``;
    a zero-length segment is its point. The Triton and CUDA kernels use the same expression.
    """
    count, num_boundaries, num_samples, _ = curves.shape
    curves = curves.reshape(count * num_boundaries, num_samples, 2)
    starts = curves[:, :-1] if num_samples > 1 else curves
    ends = curves[:, 1:] if num_samples > 1 else curves
    longest = (ends - starts).norm(dim=-1).nan_to_num(0.0, 0.0, 0.0).amax().item() if curves.numel() else 0.0
    side_x = min(int(math.floor(longest + 2 * reach)) + 2, width)
    side_y = min(int(math.floor(longest + 2 * reach)) + 2, height)
    offset_x = torch.arange(side_x, device=curves.device, dtype=torch.float32)
    offset_y = torch.arange(side_y, device=curves.device, dtype=torch.float32).unsqueeze(-1)
    outside = height * width  # scatter target of window pixels off the map, dropped at the end
    best = torch.full((count * num_boundaries, outside + 1), float("inf"), device=curves.device)
    chunk = max(1, _ELEMENTS_PER_CHUNK // max(1, count * num_boundaries * side_x * side_y))
    for first in range(0, starts.shape[1], chunk):
        a, b = starts[:, first:first + chunk], ends[:, first:first + chunk]  # (C, S, 2)
        ax, ay = a[..., 0, None, None], a[..., 1, None, None]  # (C, S, 1, 1)
        dx, dy = b[..., 0, None, None] - ax, b[..., 1, None, None] - ay
        left = torch.floor(torch.minimum(a[..., 0], b[..., 0]) - reach).clamp(0, width)
        top = torch.floor(torch.minimum(a[..., 1], b[..., 1]) - reach).clamp(0, height)
        px = left[..., None, None] + offset_x  # (C, S, 1, side_x)
        py = top[..., None, None] + offset_y  # (C, S, side_y, 1)
        length2 = (dx * dx + dy * dy).clamp_min(1e-12)
        rx, ry = px - ax, py - ay
        t = ((rx * dx + ry * dy) / length2).clamp(0.0, 1.0)
        ex, ey = rx - t * dx, ry - t * dy
        squared = ex * ex + ey * ey  # (C, S, side_y, side_x)
        on_map = (px < width) & (py < height) & squared.isfinite()
        index = torch.where(on_map, py.long() * width + px.long(), outside)
        best.scatter_reduce_(1, index.flatten(1), squared.flatten(1), reduce="amin")
    return best[:, :outside].view(count, num_boundaries, height, width)


def gaussian_cut(squared_distance: torch.Tensor, sigma: float) -> torch.Tensor:
    """``exp(-d^2 / (2 sigma^2))`` where ``d < 3 sigma``, else 0."""
    value = torch.exp(squared_distance * (-0.5 / sigma**2))
    return torch.where(squared_distance < 9.0 * sigma**2, value, torch.zeros_like(value))


def _check(landmarks: torch.Tensor, scheme: Scheme, size: int, sigma: float, dtype: torch.dtype) -> None:
    if not isinstance(landmarks, torch.Tensor):
        raise TypeError(f"landmarks must be a torch.Tensor, got {type(landmarks).__name__}")
    if landmarks.dim() != 3 or landmarks.shape[1] != scheme.num_points or landmarks.shape[2] != 2:
        raise ValueError(
            f"landmarks must be (N, {scheme.num_points}, 2) for scheme {scheme.name!r}, got {tuple(landmarks.shape)}"
        )
    if not landmarks.is_floating_point():
        raise TypeError(f"landmarks must be floating point, got {landmarks.dtype}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    for name, indices in scheme.boundaries.items():
        if not indices or min(indices) < 0 or max(indices) >= scheme.num_points:
            raise ValueError(f"scheme {scheme.name!r}: boundary {name!r} has indices outside 0..{scheme.num_points - 1}")


def check_finite_landmarks(landmarks: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the first sample and landmark that hold a NaN or an infinity.

    Without it the math degrades silently: a NaN point fails the repeat test (``NaN > tol`` is
    false) and is dropped like a repeat, an infinite one turns its whole channel to zero. The one
    place that looks at the values (one host sync, before any backend runs); the math below assumes
    finite input. Under ``torch.compile`` it is a device-side assertion instead
    (``torch._assert_async``: no host sync, no graph break), which cannot name the culprit; the
    caller that compiles a step checks eagerly before it.
    """
    finite = torch.isfinite(landmarks).all(dim=-1)  # (N, L)
    if torch.compiler.is_compiling():
        torch._assert_async(finite.all(), "landmarks must be finite (run eagerly to see which sample and landmark)")
        return
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()
    sample, landmark = bad[0].tolist()
    raise ValueError(
        f"landmarks must be finite: sample {sample} (batch index), landmark {landmark} is "
        f"{landmarks[sample, landmark].tolist()} ({len(bad)} non-finite landmarks in all)"
    )


def boundary_heatmaps_ref(
    landmarks: torch.Tensor,
    scheme: Scheme | str,
    size: int = 64,
    sigma: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(N, L, 2)`` landmarks (heatmap pixels) -> ``(N, K, size, size)`` heatmaps, plain PyTorch."""
    scheme = get(scheme)
    _check(landmarks, scheme, size, sigma, dtype)
    check_finite_landmarks(landmarks)
    return _heatmaps_ref(landmarks, scheme, size, sigma, dtype)


def _heatmaps_ref(landmarks: torch.Tensor, scheme: Scheme, size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """The reference's computation on validated arguments."""
    curves = dense_curves(landmarks, scheme, size)
    return gaussian_cut(squared_distance_ref(curves, size, size, 3.0 * sigma), sigma).to(dtype)


def boundary_heatmaps(
    landmarks: torch.Tensor,
    scheme: Scheme | str,
    size: int = 64,
    sigma: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(N, L, 2)`` landmarks (heatmap pixels) -> ``(N, K, size, size)`` heatmaps in ``dtype``.

    The spline is solved in float64 whatever the landmarks' dtype; the fused kernels compute the
    distance, Gaussian and cut per pixel and write ``dtype`` directly. Forward only. Raises
    ``ValueError`` naming the sample and landmark if any landmark is NaN or infinite.
    """
    scheme = get(scheme)
    _check(landmarks, scheme, size, sigma, dtype)
    check_finite_landmarks(landmarks)
    return heatmaps_of_curves(dense_curves(landmarks, scheme, size), size, sigma, dtype)


def heatmaps_of_curves(curves: torch.Tensor, size: int, sigma: float = 1.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, K, P, 2)`` curves of ``dense_curves`` -> ``(N, K, size, size)`` heatmaps in ``dtype``.

    The second half of :func:`boundary_heatmaps`, for a caller that uses the curves for more than
    the heatmaps (the training step measures the discriminator's labels on them too); it checks
    the landmarks first (``check_finite_landmarks``).
    """
    return torch.ops.labfast.boundary_heatmaps(curves.contiguous(), size, size, float(sigma), dtype)


# The operator. Always called, the reference included: its body runs eagerly (never traced), so the
# reference's data-dependent window (``squared_distance_ref``'s one host read) stays out of the
# compiled graph. No autograd: ground truth needs no gradient.


@torch.library.custom_op("labfast::boundary_heatmaps", mutates_args=())
def _boundary_heatmaps_op(curves: torch.Tensor, height: int, width: int, sigma: float,
                          dtype: torch.dtype) -> torch.Tensor:
    """``(N, K, P, 2)`` float32 curves -> ``(N, K, height, width)`` heatmaps in ``dtype``."""
    def triton():
        from labfast.kernels.boundary_heatmaps import boundary_heatmaps_triton

        return boundary_heatmaps_triton(curves, height, width, sigma, dtype)

    return backend.run(
        OP, curves,
        {"triton": triton, "cuda": lambda: cuda_extension.boundary_heatmaps(curves, height, width, sigma, dtype)},
        lambda: gaussian_cut(squared_distance_ref(curves, height, width, 3.0 * sigma), sigma).to(dtype))


@_boundary_heatmaps_op.register_fake
def _(curves, height, width, sigma, dtype):
    return torch.empty(curves.shape[0], curves.shape[1], height, width, dtype=dtype, device=curves.device)


def _self_check(device: torch.device, dtype: torch.dtype) -> tuple[backend.Results, backend.Results]:
    """The public function against the reference on two random 300-W faces at 16×16 (float32
    heatmaps: the landmarks' dtype does not change the curves, solved in float64)."""
    scheme, size, sigma = get("300w"), 16, 1.0
    generator = torch.Generator().manual_seed(7)
    landmarks = (torch.rand(2, scheme.num_points, 2, generator=generator) * (size - 1)).to(device, dtype)
    return ([boundary_heatmaps(landmarks, scheme, size, sigma, torch.float32)],
            [boundary_heatmaps_ref(landmarks, scheme, size, sigma, torch.float32)])


backend.register_self_check(OP, _self_check)
