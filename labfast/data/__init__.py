"""Data: one reader per data set (plain ``Sample`` lists) behind ``read_faces``, the affine crop and the Dataset."""
from ._parse import AnnotationError
from .aflw import AFLW_SPLITS, read_aflw
from .cofw import read_cofw
from .readers import DATASETS, read_faces
from .dataset import (DEFAULT_MARGIN, AugmentConfig, FaceDataset, collate_readable, crop_face, crop_face_pixels,
                      read_image_bgr, sample_image)
from .pts import read_pts, write_pts
from .sample import Sample, box_from_landmarks
from .w300 import W300_SUBSETS, read_300w, read_pts_folder
from .wflw import WFLW_ATTRIBUTES, read_wflw, read_wflw_test_subset

__all__ = [
    "AFLW_SPLITS", "AnnotationError", "AugmentConfig", "DATASETS", "DEFAULT_MARGIN", "FaceDataset", "Sample",
    "W300_SUBSETS", "WFLW_ATTRIBUTES", "box_from_landmarks", "collate_readable", "crop_face", "crop_face_pixels", "read_300w",
    "read_aflw", "read_cofw", "read_faces", "read_image_bgr", "read_pts", "read_pts_folder", "read_wflw",
    "read_wflw_test_subset", "sample_image", "write_pts",
]
