"""``labfast predict``: landmarks for image files, folders (recursive) and videos.

Outputs, under ``--out`` (for an input folder, its sub-folders are mirrored):

- ``NAME.json`` per image: ``{"image", "width", "height", "scheme", "checkpoint", "coordinates",
  "faces": [{"box": [x0, y0, x1, y1], "landmarks": [[x, y], ...]}, ...]}``, coordinates 0-based
  pixel centres of the original image (pixel (row i, col j) has its centre at (x=j, y=i)).
- ``NAME_1.pts``, ``NAME_2.pts`` ... with ``--pts``: one iBUG ``.pts`` file per face, **1-based**
  like every iBUG file (300-W's ``photo_N`` naming).
- ``NAME.png``: the image with the predicted boundary heatmaps, boxes and landmarks drawn
  (skipped with ``--no-overlay``).
- A video ``CLIP.mp4`` gives ``CLIP.json`` (``"frames": [{"frame": i, "faces": [...]}, ...]``),
  ``CLIP/FRAME_K.pts`` with ``--pts`` (frame number zero-padded to 6 digits), and the overlay
  video ``CLIP.overlay.mp4``.

Faces come from OpenCV's Haar cascade (``labfast.detect``), or from ``--boxes FILE.json``::

    {"photos/a.jpg": [[x0, y0, x1, y1], ...], "b.png": [], ...}

keyed by the image path as given or found (``photos/a.jpg``), its path relative to the input
folder, or its file name; boxes in the landmark-extent convention LAB trains on (the box around
the 68 points), 0-based pixels. Images the file does not list get the detector. Videos always use
the detector.

An image without a face gets an empty ``faces`` list and a log line. An image that cannot be read
is reported by name, the others go on, and the command exits with status 1 listing the failures.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from labfast.cpu_inference import add_threads_argument

logger = logging.getLogger("labfast.predict")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
COORDINATES = "0-based pixel centres of the original image, x then y"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively for images) or video files")
    parser.add_argument("--checkpoint", default=None, help="labfast checkpoint (default: the weights shipped with labfast, if any)")
    parser.add_argument("--scheme", default=None, help="expected landmark scheme (e.g. 300w); fail if the checkpoint predicts another")
    parser.add_argument("--boxes", default=None, help='JSON {"image path or name": [[x0, y0, x1, y1], ...]} of landmark-extent face boxes')
    parser.add_argument("--batch", type=int, default=64, help="faces per forward pass, and images or frames read at a time")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--out", default="labfast-predictions", help="output folder")
    parser.add_argument("--pts", action="store_true", help="also write one 1-based iBUG .pts file per face")
    parser.add_argument("--no-overlay", action="store_true", help="do not draw overlay images / videos")
    parser.add_argument("--flip", action="store_true", help="average with the prediction for the mirrored face (2x compute)")
    add_threads_argument(parser)


@dataclass
class Item:
    """One input to process: ``path`` on disk, ``name`` the output stem relative to ``--out``."""

    path: Path
    name: str
    key: str  # relative path inside its input folder (or the path as given), for --boxes lookup


def collect_inputs(inputs: Sequence[str]) -> tuple[list[Item], list[Item]]:
    """Expand the command line into image items and video items; unknown inputs raise naming them."""
    images: list[Item] = []
    videos: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                logger.warning("folder %s holds no image (%s)", path, ", ".join(IMAGE_SUFFIXES))
            for file in found:
                relative = file.relative_to(path)
                images.append(Item(file, str(relative.with_suffix("")), str(relative)))
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                videos.append(Item(path, path.stem, given))
            elif suffix in IMAGE_SUFFIXES:
                images.append(Item(path, path.stem, given))
            else:
                raise SystemExit(f"labfast predict: {given} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video ({', '.join(VIDEO_SUFFIXES)})")
        else:
            raise SystemExit(f"labfast predict: input {given} does not exist")
    names: dict[str, Path] = {}
    for item in images + videos:
        if item.name in names:
            raise SystemExit(
                f"labfast predict: {names[item.name]} and {item.path} would both write {item.name}.json; "
                "pass them in separate runs or rename one"
            )
        names[item.name] = item.path
    return images, videos


def read_boxes(path: str) -> dict[str, np.ndarray]:
    """The ``--boxes`` JSON -> ``{key: (F, 4) float32}``; malformed entries raise naming the key."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"labfast predict: cannot read boxes file {path}: {error}") from error
    if not isinstance(raw, dict):
        raise SystemExit(f"labfast predict: boxes file {path} must hold a JSON object {{image: [[x0, y0, x1, y1], ...]}}")
    boxes = {}
    for key, value in raw.items():
        array = np.asarray(value, dtype=np.float32) if value else np.zeros((0, 4), np.float32)
        if array.ndim != 2 or array.shape[1] != 4 or not np.isfinite(array).all() or \
                (array[:, 2] <= array[:, 0]).any() or (array[:, 3] <= array[:, 1]).any():
            raise SystemExit(f"labfast predict: boxes file {path}, entry {key!r}: expected a list of finite "
                             f"[x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {value!r}")
        boxes[key] = array
    return boxes


def lookup_boxes(boxes: dict[str, np.ndarray], item: Item) -> np.ndarray | None:
    for key in (item.key, str(item.path), str(item.path.resolve()), item.path.name):
        if key in boxes:
            return boxes[key]
    return None


def face_records(faces) -> list[dict]:
    return [{"box": face.box.tolist(), "landmarks": face.landmarks.tolist()} for face in faces]


def write_pts_files(stem: Path, faces) -> None:
    from labfast.data.pts import write_pts

    stem.parent.mkdir(parents=True, exist_ok=True)
    for number, face in enumerate(faces, start=1):
        write_pts(f"{stem}_{number}.pts", face.landmarks.astype(np.float64) + 1.0)  # iBUG files are 1-based


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_images(aligner, items: list[Item], args, boxes: dict[str, np.ndarray] | None, failures: list[str]) -> int:
    """Predict and write every image of ``items``, ``--batch`` images at a time; returns how many were written."""
    from labfast.overlay import draw_faces

    out = Path(args.out)
    progress = tqdm(total=len(items), unit="image", desc="predict", disable=len(items) < 2 or None)
    written = 0
    for chunk in _chunks(items, args.batch):
        readable, pixels, chunk_boxes = [], [], []
        for item in chunk:
            image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
            if image is None:
                message = f"{item.path}: cannot read the image (corrupt, empty or not an image OpenCV decodes)"
                logger.error(message)
                failures.append(message)
                progress.update(1)
                continue
            readable.append(item)
            pixels.append(image)
            chunk_boxes.append(lookup_boxes(boxes, item) if boxes is not None else None)
        detect = [index for index, found in enumerate(chunk_boxes) if found is None]
        if boxes is not None:
            for index in detect:
                logger.info("%s is not in the boxes file: using the face detector", readable[index].path)
        results = [None] * len(readable)
        if detect:
            for index, faces in zip(detect, aligner.predict([pixels[i] for i in detect], heatmaps=not args.no_overlay)):
                results[index] = faces
        given = [index for index, found in enumerate(chunk_boxes) if found is not None]
        if given:
            predicted = aligner.predict([pixels[i] for i in given], boxes=[chunk_boxes[i] for i in given], heatmaps=not args.no_overlay)
            for index, faces in zip(given, predicted):
                results[index] = faces
        for item, image, faces in zip(readable, pixels, results):
            if not faces:
                logger.info("%s: no face found", item.path)
            stem = out / item.name
            _write_json(stem.with_suffix(".json"), {
                "image": str(item.path), "width": image.shape[1], "height": image.shape[0],
                "scheme": aligner.scheme.name, "checkpoint": aligner.checkpoint, "coordinates": COORDINATES,
                "faces": face_records(faces),
            })
            if args.pts:
                write_pts_files(stem, faces)
            if not args.no_overlay:
                if not cv2.imwrite(str(stem.with_suffix(".png")), draw_faces(image, faces)):
                    raise OSError(f"could not write {stem.with_suffix('.png')}")
            written += 1
            progress.update(1)
    progress.close()
    return written


def predict_video(aligner, item: Item, args, failures: list[str]) -> bool:
    """Predict every frame of one video, ``--batch`` frames at a time; ``False`` if it could not be read."""
    from labfast.overlay import draw_faces

    capture = cv2.VideoCapture(str(item.path))
    if not capture.isOpened():
        message = f"{item.path}: cannot open the video"
        logger.error(message)
        failures.append(message)
        return False
    out = Path(args.out)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    frames: list[dict] = []
    progress = tqdm(total=total, unit="frame", desc=item.path.name, disable=None)
    try:
        finished = False
        while not finished:
            batch = []
            while len(batch) < args.batch:
                ok, frame = capture.read()
                if not ok:
                    finished = True
                    break
                batch.append(frame)
            if not batch:
                break
            for frame, faces in zip(batch, aligner.predict(batch, heatmaps=not args.no_overlay)):
                number = len(frames)
                frames.append({"frame": number, "faces": face_records(faces)})
                if args.pts:
                    write_pts_files(out / item.name / f"{number:06d}", faces)
                if not args.no_overlay:
                    if writer is None:
                        path = out / f"{item.name}.overlay.mp4"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
                        if not writer.isOpened():
                            raise OSError(f"OpenCV cannot write the overlay video {path}")
                    writer.write(draw_faces(frame, faces))
            progress.update(len(batch))
    finally:
        progress.close()
        capture.release()
        if writer is not None:
            writer.release()
    if not frames:
        message = f"{item.path}: no frame could be decoded"
        logger.error(message)
        failures.append(message)
        return False
    logger.info("%s: %d frames, %d without a face", item.path, len(frames), sum(not f["faces"] for f in frames))
    _write_json(out / f"{item.name}.json", {
        "video": str(item.path), "fps": fps, "scheme": aligner.scheme.name, "checkpoint": aligner.checkpoint,
        "coordinates": COORDINATES, "frames": frames,
    })
    return True


def run(args: argparse.Namespace) -> int:
    from labfast.aligner import FaceAligner

    if args.batch < 1:
        raise SystemExit(f"labfast predict: --batch must be at least 1, got {args.batch}")
    images, videos = collect_inputs(args.inputs)
    boxes = read_boxes(args.boxes) if args.boxes else None
    aligner = FaceAligner(args.checkpoint, device=args.device, batch_size=args.batch, threads=args.threads, flip=args.flip)
    if args.scheme is not None and args.scheme != aligner.scheme.name:
        raise SystemExit(f"labfast predict: checkpoint {aligner.checkpoint} predicts scheme {aligner.scheme.name!r}, not {args.scheme!r}")
    os.makedirs(args.out, exist_ok=True)
    failures: list[str] = []
    written_images = predict_images(aligner, images, args, boxes, failures)
    written_videos = sum(predict_video(aligner, video, args, failures) for video in videos)
    logger.info("wrote predictions for %d images and %d videos to %s", written_images, written_videos, args.out)
    if failures:
        logger.error("%d input(s) failed:\n  %s", len(failures), "\n  ".join(failures))
        return 1
    return 0
