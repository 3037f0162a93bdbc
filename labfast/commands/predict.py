"""``labfast predict``: landmarks for image files, folders (recursive) and videos.

Outputs, under ``--out`` (for an input folder, its sub-folders are mirrored):

- ``NAME.json`` per image: ``{"image", "width", "height", "scheme", "checkpoint", "coordinates",
  "detector", "score", "faces": [{"box": [x0, y0, x1, y1], "score", "confidence", "landmarks":
  [[x, y], ...]}, ...]}``, coordinates 0-based pixel centres of the original image (pixel (row i,
  col j) has its centre at (x=j, y=i)). ``detector`` names what found the faces (``yunet``,
  ``haar``, or ``null`` when the boxes came from ``--boxes``) and ``score`` says what its face
  score means (``labfast.inference.detect.SCORE_MEANING``); a face's ``score`` is ``null`` for a
  ``--boxes`` box. ``confidence`` is the landmarks' agreement with the boundary heatmaps
  (``labfast.inference.aligner.Face``).
- ``NAME_1.pts``, ``NAME_2.pts`` ... with ``--pts``: one iBUG ``.pts`` file per face, **1-based**
  like every iBUG file (300-W's ``photo_N`` naming).
- ``NAME.jpg`` for a JPEG input, else ``NAME.png``: the image with the predicted boundary heatmaps,
  boxes and landmarks drawn (``--overlay-style points``: boxes and landmarks only; skipped with
  ``--no-overlay``).
- A video ``CLIP.mp4`` gives ``CLIP.json`` (``"frames": [{"frame": i, "faces": [...]}, ...]``, each
  face also with its ``"track"`` id, the same on every frame while the face is followed, and the
  ``score`` of the detection that started or last refreshed its track),
  ``CLIP/FRAME_K.pts`` with ``--pts`` (frame number zero-padded to 6 digits), and the overlay
  video ``CLIP.overlay.mp4``. A video that ends before the frame count its container declares is
  reported as a failure (``read 13 of 60 frames``) after its frames are written.

Images are every file OpenCV can decode (``cv2.haveImageReader``: JPEG, PNG, PPM/PGM, BMP, TIFF,
WebP, ...); videos are recognised by their suffix. Images go through the model in chunks of at
most ``--batch`` images and ``--max-megapixels`` pixels, however large ``--batch`` is (a larger
image goes alone); the image that opens the next chunk is decoded before the chunk is processed, so
at most ``--max-megapixels`` plus one image are held at once. Videos are read one frame at a time.

Faces come from the YuNet detector shipped in ``labfast/detectors`` (``--detector haar`` for
OpenCV's Haar cascade; see ``labfast.inference.detect``), or from ``--boxes FILE.json``::

    {"photos/a.jpg": [[x0, y0, x1, y1], ...], "b.png": [], ...}

keyed by the image path as given or found (``photos/a.jpg``), its path relative to the input
folder, or its file name; boxes in the landmark-extent convention LAB trains on (the box around
the 68 points), 0-based pixels. Images the file does not list get the detector. In a video, faces
are detected and then followed by their landmarks (``labfast.inference.track``; ``--redetect-every 1``
detects in every frame).

Detections are kept when the detector's score is at least ``--min-score`` and the landmark
confidence at least ``--min-confidence`` (the face-or-not threshold fitted for the shipped weights,
``labfast/detectors/face_confidence.json``; ``--min-confidence 0`` keeps every detection). Boxes of
``--boxes`` are never dropped; one wholly outside its image, or many times its size, is named, that
image is skipped and the command exits 1. A ``--boxes`` key that names no input is reported (exit 1).

Two inputs with the same name and different suffixes in one folder (``x.jpg``, ``x.png``) keep the
suffix in their outputs: ``x.jpg.json``, ``x.png.json`` (overlays ``x.jpg.jpg``, ``x.png.png``; ``x.jpg_1.pts``).

An image without a face gets an empty ``faces`` list and a log line. An input that cannot be read
(or is neither an image nor a video, or a video that ended early) is reported by name, the others
go on, and the command exits with status 1 listing the failures. Progress goes to stderr
(``labfast.progress``: a bar on a terminal, a line every few seconds elsewhere, none with ``-q``).
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
from labfast.inference.detect import SCORE_MEANING
from labfast.inference.overlay import HEATMAP_OPACITY, OVERLAY_STYLES, overlay_suffix
from labfast.inference.runtime import add_threads_argument
from labfast.progress import Progress
from labfast.inference.track import DEFAULT_REDETECT_EVERY

logger = logging.getLogger("labfast.commands.predict")

#: Suffixes of formats OpenCV decodes: a file with one is an image even if it turns out unreadable
#: (then reported as such); any other file is an image when OpenCV recognises its signature.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".pfm", ".pxm", ".sr", ".ras", ".jp2", ".exr", ".hdr", ".pic", ".avif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
COORDINATES = "0-based pixel centres of the original image, x then y"
#: Decoded images (or video frames) held in memory at once, in megapixels: 100 MP is 300 MB of BGR pixels.
DEFAULT_MAX_MEGAPIXELS = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively for images) or video files")
    parser.add_argument("--checkpoint", default=None, help="labfast checkpoint (default: the weights shipped with labfast, if any)")
    parser.add_argument("--scheme", default=None, help="expected landmark scheme (e.g. 300w); fail if the checkpoint predicts another")
    parser.add_argument("--boxes", default=None, help='JSON {"image path or name": [[x0, y0, x1, y1], ...]} of landmark-extent face boxes')
    parser.add_argument("--detector", default="yunet", choices=("yunet", "haar"), help="face detector (default: yunet, shipped)")
    parser.add_argument("--batch", type=int, default=64, help="faces per forward pass, and at most this many images or frames read at a time")
    parser.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS,
                        help=f"pixels of the images processed together, in megapixels (default {DEFAULT_MAX_MEGAPIXELS:g}); "
                             "at most this plus one image is held in memory")
    parser.add_argument("--min-score", type=float, default=None,
                        help="the detector score a face needs (default: YuNet's 0.6; every Haar detection)")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="drop detections whose landmark confidence is below this (default: the fitted face-or-not "
                             "threshold, labfast/detectors/face_confidence.json; 0 keeps every detection)")
    parser.add_argument("--redetect-every", type=int, default=DEFAULT_REDETECT_EVERY,
                        help=f"video: run the detector at least every N frames (default {DEFAULT_REDETECT_EVERY}; 1: every frame)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--out", default="labfast-predictions", help="output folder")
    parser.add_argument("--pts", action="store_true", help="also write one 1-based iBUG .pts file per face")
    parser.add_argument("--no-overlay", action="store_true", help="do not draw overlay images / videos")
    parser.add_argument("--overlay-style", default="boundaries", choices=OVERLAY_STYLES,
                        help="boundaries: boundary heatmaps, boxes and landmarks (default); points: boxes and landmarks only")
    parser.add_argument("--overlay-opacity", type=float, default=HEATMAP_OPACITY,
                        help=f"opacity of a boundary heatmap at its peak, in (0, 1] (default {HEATMAP_OPACITY:g}: the face shows through)")
    parser.add_argument("--flip", action="store_true", help="average with the prediction for the mirrored face (2x compute)")
    add_threads_argument(parser)


@dataclass
class Item:
    """One input to process: ``path`` on disk, ``name`` the output stem relative to ``--out``."""

    path: Path
    name: str
    key: str  # relative path inside its input folder (or the path as given), for --boxes lookup


def is_image(path: Path) -> bool:
    """A file with an image suffix, or one whose signature OpenCV recognises as an image format."""
    return path.suffix.lower() in IMAGE_SUFFIXES or cv2.haveImageReader(str(path))


def collect_inputs(inputs: Sequence[str], failures: list[str]) -> tuple[list[Item], list[Item]]:
    """Expand the command line into image items and video items; an input that is neither is
    logged and added to ``failures``; a missing input ends the command naming it."""
    images: list[Item] = []
    videos: list[Item] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() not in VIDEO_SUFFIXES and is_image(p))
            if not found:
                logger.warning("folder %s holds no image OpenCV can read", path)
            for file in found:
                relative = file.relative_to(path)
                images.append(Item(file, str(relative.with_suffix("")), str(relative)))
        elif path.is_file():
            if path.suffix.lower() in VIDEO_SUFFIXES:
                videos.append(Item(path, path.stem, given))
            elif is_image(path):
                images.append(Item(path, path.stem, given))
            else:
                message = (f"{given}: neither an image OpenCV can decode nor a video ({', '.join(VIDEO_SUFFIXES)})")
                logger.error(message)
                failures.append(message)
        else:
            raise SystemExit(f"labfast predict: input {given} does not exist")
    keep_suffixes(images + videos)
    return images, videos


def keep_suffixes(items: list[Item]) -> None:
    """Inputs that share an output name (``x.jpg`` and ``x.png`` in one folder) keep their suffix in
    it: ``x.jpg.json`` and ``x.png.json``; inputs that would still collide end the command naming both."""
    by_name: dict[str, list[Item]] = {}
    for item in items:
        by_name.setdefault(item.name, []).append(item)
    for shared in by_name.values():
        if len(shared) > 1:
            for item in shared:
                item.name += item.path.suffix
    names: dict[str, Path] = {}
    for item in items:
        if item.name in names:
            raise SystemExit(f"labfast predict: {names[item.name]} and {item.path} would both write {item.name}.json; "
                             "pass them in separate runs or rename one")
        names[item.name] = item.path


def output_path(stem: Path, suffix: str) -> Path:
    """``stem`` plus ``suffix`` (``Path.with_suffix`` would replace a dot already in the name: ``x.jpg``, ``a.v2``)."""
    return stem.with_name(stem.name + suffix)


def read_boxes(path: str) -> dict[str, np.ndarray]:
    """The ``--boxes`` JSON -> ``{key: (F, 4) float32}``; malformed entries raise naming the key."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not JSON, or not UTF-8
        raise SystemExit(f"labfast predict: cannot read boxes file {path}: {error.__class__.__name__}: {error}") from error
    if not isinstance(raw, dict):
        raise SystemExit(f"labfast predict: boxes file {path} must hold a JSON object {{image: [[x0, y0, x1, y1], ...]}}")
    boxes = {}
    for key, value in raw.items():
        try:
            array = np.asarray(value, dtype=np.float32) if value else np.zeros((0, 4), np.float32)
        except (TypeError, ValueError, OverflowError):  # text, objects, ragged lists, huge integers
            array = np.zeros(0, np.float32)
        if array.ndim != 2 or array.shape[1] != 4 or not np.isfinite(array).all() or \
                (array[:, 2] <= array[:, 0]).any() or (array[:, 3] <= array[:, 1]).any():
            raise SystemExit(f"labfast predict: boxes file {path}, entry {key!r}: expected a list of finite "
                             f"[x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {value!r}")
        boxes[key] = array
    return boxes


def box_keys(item: Item) -> tuple[str, ...]:
    """The ``--boxes`` keys that name ``item``, in the order they are looked up."""
    return item.key, str(item.path), str(item.path.resolve()), item.path.name


def lookup_boxes(boxes: dict[str, np.ndarray], item: Item) -> np.ndarray | None:
    return next((boxes[key] for key in box_keys(item) if key in boxes), None)


def unmatched_keys(boxes: dict[str, np.ndarray], items: list[Item]) -> list[str]:
    """Keys of the ``--boxes`` file that name no input (a typo would otherwise silently run the detector)."""
    named = {key for item in items for key in box_keys(item)}
    return [key for key in boxes if key not in named]


def face_records(faces) -> list[dict]:
    """The JSON of faces; a face of a video also has its ``track`` id."""
    return [{"box": face.box.tolist(), "score": face.score, "confidence": round(face.confidence, 4),
             **({} if face.track_id is None else {"track": face.track_id}),
             "landmarks": face.landmarks.tolist()} for face in faces]


def detector_record(detector: str | None) -> dict:
    """What found the faces and what its ``score`` means; ``None``: the boxes came from ``--boxes``."""
    if detector is None:
        return {"detector": None, "score": "null: the face boxes came from the --boxes file"}
    return {"detector": detector, "score": SCORE_MEANING[detector]}


def write_pts_files(stem: Path, faces) -> None:
    from labfast.data.pts import write_pts

    stem.parent.mkdir(parents=True, exist_ok=True)
    for number, face in enumerate(faces, start=1):
        write_pts(f"{stem}_{number}.pts", face.landmarks.astype(np.float64) + 1.0)  # iBUG files are 1-based


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")


def read_image_chunks(items: list[Item], max_images: int, max_megapixels: float, failures: list[str],
                      progress) -> Iterator[tuple[list[Item], list[np.ndarray]]]:
    """Decoded images in chunks of at most ``max_images`` images and ``max_megapixels`` pixels (one
    larger image alone); unreadable ones are logged and added to ``failures``. While a chunk is
    processed, the image that opens the next one is already decoded (its size is only known then)."""
    chunk: list[Item] = []
    pixels: list[np.ndarray] = []
    held = 0.0
    for item in items:
        image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
        if image is None:
            message = f"{item.path}: cannot read the image (corrupt, empty or not an image OpenCV decodes)"
            logger.error(message)
            failures.append(message)
            progress.update(1)
            continue
        megapixels = image.shape[0] * image.shape[1] / 1e6
        if chunk and held + megapixels > max_megapixels:
            yield chunk, pixels
            chunk, pixels, held = [], [], 0.0
        chunk.append(item)
        pixels.append(image)
        held += megapixels
        if len(chunk) >= max_images:
            yield chunk, pixels
            chunk, pixels, held = [], [], 0.0
    if chunk:
        yield chunk, pixels


def accepted_boxes(items: list[Item], pixels: list[np.ndarray], chunk_boxes: list, failures: list[str]) -> list[int]:
    """Indices of the chunk's images to predict: a ``--boxes`` entry the aligner refuses (a box wholly
    outside its image, one far larger than it) is named, added to ``failures`` and its image skipped."""
    from labfast.inference.aligner import check_boxes

    kept = []
    for index, (item, image, found) in enumerate(zip(items, pixels, chunk_boxes)):
        try:
            if found is not None:
                check_boxes(found, index, image.shape)  # the aligner warns of a box partly outside, below
        except ValueError as error:
            message = f"{item.path}: --boxes entry skipped: {str(error).split(': ', 1)[1]}"
            logger.error(message)
            failures.append(message)
            continue
        kept.append(index)
    return kept


def predict_images(aligner, items: list[Item], args, boxes: dict[str, np.ndarray] | None, failures: list[str]) -> int:
    """Predict and write every image of ``items`` in chunks bounded by ``--batch`` and ``--max-megapixels``;
    returns how many were written."""
    from labfast.inference.overlay import draw_faces, write_overlay

    out = Path(args.out)
    heatmaps = not args.no_overlay and args.overlay_style == "boundaries"
    progress = Progress(len(items), "predict", "image")
    written = 0
    for readable, pixels in read_image_chunks(items, args.batch, args.max_megapixels, failures, progress):
        chunk_boxes = [lookup_boxes(boxes, item) if boxes is not None else None for item in readable]
        detect = [index for index, found in enumerate(chunk_boxes) if found is None]
        if boxes is not None:
            for index in detect:
                logger.info("%s is not in the boxes file: using the face detector", readable[index].path)
        results = [None] * len(readable)
        if detect:
            for index, faces in zip(detect, aligner.predict([pixels[i] for i in detect], heatmaps=heatmaps)):
                results[index] = faces
        given = [index for index in accepted_boxes(readable, pixels, chunk_boxes, failures) if chunk_boxes[index] is not None]
        if given:
            predicted = aligner.predict([pixels[i] for i in given], boxes=[chunk_boxes[i] for i in given], heatmaps=heatmaps)
            for index, faces in zip(given, predicted):
                results[index] = faces
        for item, image, faces, given_boxes in zip(readable, pixels, results, chunk_boxes):
            if faces is None:  # its --boxes entry was refused (accepted_boxes)
                progress.update(1)
                continue
            if not faces:
                logger.info("%s: no face found", item.path)
            stem = out / item.name
            _write_json(output_path(stem, ".json"), {
                "image": str(item.path), "width": image.shape[1], "height": image.shape[0],
                "scheme": aligner.scheme.name, "checkpoint": aligner.checkpoint, "coordinates": COORDINATES,
                **detector_record(aligner.detector if given_boxes is None else None), "faces": face_records(faces),
            })
            if args.pts:
                write_pts_files(stem, faces)
            if not args.no_overlay:
                write_overlay(_overlay_path(out, item),
                              draw_faces(image, faces, boundaries=heatmaps, opacity=args.overlay_opacity))
            written += 1
            progress.update(1)
    progress.close()
    return written


def _overlay_path(out: Path, item: Item) -> Path:
    """Where ``item``'s overlay goes: its output stem with the suffix of its kind of input
    (``labfast.inference.overlay.overlay_suffix``)."""
    return output_path(out / item.name, overlay_suffix(item.path))


def predict_video(aligner, item: Item, args, failures: list[str]) -> bool:
    """Predict every frame of one video, following faces by their landmarks (``labfast.inference.track``);
    ``False`` if it could not be read, or ended before the frame count its container declares (the
    frames read are still written)."""
    capture = cv2.VideoCapture(str(item.path))
    if not capture.isOpened():
        message = f"{item.path}: cannot open the video"
        logger.error(message)
        failures.append(message)
        return False
    declared = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0) or None
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    try:
        frames, detections = _predict_frames(aligner, capture, item, args, declared, fps)
    finally:
        capture.release()
    if not frames:
        message = f"{item.path}: no frame could be decoded"
        logger.error(message)
        failures.append(message)
        return False
    read = f"{len(frames)} of {declared}" if declared else f"{len(frames)} (the container declares no frame count)"
    logger.info("%s: read %s frames, %d without a face, detector run on %d", item.path, read,
                sum(not f["faces"] for f in frames), detections)
    _write_json(Path(args.out) / f"{item.name}.json", {
        "video": str(item.path), "fps": fps, "frames_declared": declared, "scheme": aligner.scheme.name,
        "checkpoint": aligner.checkpoint, "coordinates": COORDINATES, **detector_record(aligner.detector), "frames": frames,
    })
    if declared and len(frames) < declared:
        message = (f"{item.path}: read {len(frames)} of {declared} frames the container declares: the video ended early "
                   "(damaged or truncated); the frames read were written")
        logger.error(message)
        failures.append(message)
        return False
    return True


def _predict_frames(aligner, capture, item: Item, args, declared: int | None, fps: float) -> tuple[list[dict], int]:
    """Every frame ``capture`` decodes, tracked and written (``.pts``, overlay video); returns the
    frames' records and how many frames the detector ran on."""
    from labfast.inference.overlay import draw_faces
    from labfast.inference.track import FaceTracker

    out = Path(args.out)
    heatmaps = not args.no_overlay and args.overlay_style == "boundaries"
    tracker = FaceTracker(aligner, redetect_every=args.redetect_every)
    frames: list[dict] = []
    writer = None
    try:
        with Progress(declared, item.path.name, "frame") as progress:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                faces = tracker.update(frame, heatmaps=heatmaps)
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
                    writer.write(draw_faces(frame, faces, boundaries=heatmaps, opacity=args.overlay_opacity))
                progress.update(1)
    finally:
        if writer is not None:
            writer.release()
    return frames, tracker.detections


def run(args: argparse.Namespace) -> int:
    from labfast.inference.aligner import FaceAligner

    if args.batch < 1:
        raise SystemExit(f"labfast predict: --batch must be at least 1, got {args.batch}")
    if not args.max_megapixels > 0:
        raise SystemExit(f"labfast predict: --max-megapixels must be positive, got {args.max_megapixels}")
    if args.redetect_every < 1:
        raise SystemExit(f"labfast predict: --redetect-every must be at least 1, got {args.redetect_every}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"labfast predict: --threads must be at least 1, got {args.threads}")
    if not 0 < args.overlay_opacity <= 1:
        raise SystemExit(f"labfast predict: --overlay-opacity must be in (0, 1], got {args.overlay_opacity}")
    failures: list[str] = []
    images, videos = collect_inputs(args.inputs, failures)
    overwritten = [item.path for item in images
                   if not args.no_overlay and _overlay_path(Path(args.out), item).resolve() == item.path.resolve()]
    if overwritten:  # --out is the input folder
        raise SystemExit(f"labfast predict: the overlay of {overwritten[0]} would overwrite it; choose another --out")
    boxes = read_boxes(args.boxes) if args.boxes else None
    if boxes is not None and (unmatched := unmatched_keys(boxes, images)):
        message = (f"{args.boxes}: {len(unmatched)} key(s) match no input image, their boxes are unused: "
                   f"{', '.join(map(repr, unmatched))} (keys: the path as given, relative to its folder, or the file name)")
        logger.error(message)
        failures.append(message)
    try:
        aligner = FaceAligner(args.checkpoint, device=args.device, batch_size=args.batch, threads=args.threads,
                              flip=args.flip, detector=args.detector, min_score=args.min_score,
                              min_confidence=args.min_confidence)
    except ValueError as error:  # a device this torch cannot use
        raise SystemExit(f"labfast predict: {error}") from error
    if args.scheme is not None and args.scheme != aligner.scheme.name:
        raise SystemExit(f"labfast predict: checkpoint {aligner.checkpoint} predicts scheme {aligner.scheme.name!r}, not {args.scheme!r}")
    os.makedirs(args.out, exist_ok=True)
    written_images = predict_images(aligner, images, args, boxes, failures)
    if videos and not args.verbose:
        # FFmpeg prints a line per damaged packet (thousands for one bad clip); the frame count
        # read against the declared one says it in one line. Read when the first capture opens.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    written_videos = sum(predict_video(aligner, video, args, failures) for video in videos)
    logger.info("wrote predictions for %d images and %d videos to %s", written_images, written_videos, args.out)
    if failures:
        logger.error("%d input(s) failed:\n  %s", len(failures), "\n  ".join(failures))
        return 1
    return 0
