"""Packaging: the top-level kernels/ folder ships as labfast.kernels (through the link labfast/kernels), the YuNet detector as package data;
research-only data does not ship."""
import subprocess
import sys
import zipfile
from pathlib import Path

import labfast.kernels

ROOT = Path(__file__).resolve().parents[1]
DETECTOR_FILES = ("face_detection_yunet_2026may.onnx", "LICENSE", "README.md", "box_conversion.json", "face_confidence.json")


def test_kernels_import_as_a_subpackage_of_the_editable_install():
    assert Path(labfast.kernels.__file__).resolve().parent == ROOT / "kernels"
    from labfast.kernels import boundary_heatmaps, fusion, message_passing  # noqa: F401


def test_wheel_holds_kernels_and_weights_but_no_bundled_faces(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheel, = tmp_path.glob("labfast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("boundary_heatmaps", "fusion", "message_passing"):
        assert f"labfast/kernels/{module}.py" in names
    packages = sorted(path.parent.relative_to(ROOT).as_posix() for path in (ROOT / "labfast").rglob("__init__.py"))
    assert [package for package in packages if f"{package}/__init__.py" not in names] == []  # setup.py lists each
    assert not any(name.startswith(("data/", "tests/", "benchmarks/")) or "300w_sample" in name for name in names)
    shipped = sorted(p.relative_to(ROOT / "labfast").as_posix() for p in (ROOT / "labfast" / "weights").glob("*")) if (ROOT / "labfast" / "weights").is_dir() else []
    assert all(f"labfast/{name}" in names for name in shipped)
    assert all(f"labfast/detectors/{name}" in names for name in DETECTOR_FILES)

    # A regular (non-editable) install of that wheel: import it with no site-packages at all, so the
    # editable install cannot answer instead.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    found = subprocess.run([sys.executable, "-S", "-c", "import labfast.kernels; print(labfast.kernels.__file__)"],
                           cwd=tmp_path, env={"PYTHONPATH": str(target)}, check=True, capture_output=True, text=True)
    assert Path(found.stdout.strip()) == target / "labfast" / "kernels" / "__init__.py"
    # the installed package finds its detector through importlib.resources, as labfast.inference.detect does
    yunet = subprocess.run([sys.executable, "-S", "-c", "import hashlib, importlib.resources as r; "
                            "f = r.files('labfast').joinpath('detectors', 'face_detection_yunet_2026may.onnx'); "
                            "print(f, hashlib.sha256(f.read_bytes()).hexdigest())"],
                           cwd=tmp_path, env={"PYTHONPATH": str(target)}, check=True, capture_output=True, text=True)
    path, digest = yunet.stdout.split()
    assert Path(path) == target / "labfast" / "detectors" / "face_detection_yunet_2026may.onnx"
    assert digest == "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"


def test_the_editable_install_finds_the_shipped_detector_files():
    from labfast.inference import detect

    for name in DETECTOR_FILES:
        assert detect.detector_file(name) == ROOT / "labfast" / "detectors" / name
