"""The crop maths every path shares (labfast.data.transforms): affine inversion and application,
and the pixel-centre rescale between grids."""
import cv2
import numpy as np
import torch

from labfast.data.transforms import apply_affine, invert_affine, rescale_pixel_coordinates


def test_invert_affine_is_opencvs_inverse_bit_for_bit_and_batched():
    """Crops (warp_crop), predictions (the inference core) and overlays all invert with it, so it must
    not differ from what they used before, cv2.invertAffineTransform, by a single bit."""
    matrices = np.random.default_rng(0).normal(size=(500, 2, 3)) * [[2.0, 2.0, 400.0]]
    batched = invert_affine(matrices)
    assert batched.shape == (500, 2, 3) and batched.dtype == np.float64
    for matrix, inverse in zip(matrices, batched):
        np.testing.assert_array_equal(inverse, cv2.invertAffineTransform(matrix))
    np.testing.assert_array_equal(invert_affine(matrices[0]), batched[0])


def test_apply_affine_takes_arrays_and_tensors_batched_or_not():
    rng = np.random.default_rng(1)
    matrices, points = rng.normal(size=(3, 2, 3)), rng.normal(size=(3, 5, 2))
    expected = np.stack([p @ m[:, :2].T + m[:, 2] for p, m in zip(points, matrices)])
    np.testing.assert_array_equal(apply_affine(points[1], matrices[1]), expected[1])
    np.testing.assert_array_equal(apply_affine(points, matrices), expected)
    torch.testing.assert_close(apply_affine(torch.from_numpy(points), torch.from_numpy(matrices)),
                               torch.from_numpy(expected), rtol=0, atol=1e-12)
    round_trip = apply_affine(apply_affine(points, matrices), invert_affine(matrices))
    np.testing.assert_allclose(round_trip, points, rtol=0, atol=1e-12)


def test_rescale_maps_pixel_centres_onto_pixel_centres_and_edges_onto_edges():
    # a 256 px crop onto its 64 px heatmap: the outer edges coincide, crop pixels 0..3 share heatmap pixel 0
    np.testing.assert_array_equal(rescale_pixel_coordinates(np.array([-0.5, 1.5, 255.5]), 64 / 256), [-0.5, 0.0, 63.5])
    assert rescale_pixel_coordinates(rescale_pixel_coordinates(10.25, 4.0), 0.25) == 10.25
