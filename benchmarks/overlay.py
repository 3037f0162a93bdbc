"""What the overlay costs ``labfast predict``: time, peak memory and file size, with and without it.

    python benchmarks/overlay.py [--repeats 3] [--group-side 4000] [--json benchmarks/results/overlay-cpu.json]

Two inputs: the 12 whole photos of ``../shared/data/300w_fullres_samples`` (0.1 to 6 MP, one face
each annotated) in one run, and a group photo made from them (no group photo ships with the data):
each photo's annotated face cut out as a square of 2.5 times its landmark box's longer side, resized
to a tile, the 12 tiles laid 4 by 3 into a ``--group-side`` px wide JPEG (quality 92): 12 faces of
about a quarter of a tile each.

Each run is a fresh process (``--child``) that builds ``FaceAligner`` (shipped weights, CPU, one
thread), warms it up on a small photo, then times ``labfast.commands.predict.predict_images`` (detect,
align, write JSON, and draw and write the overlay) over the input, parsed from ``labfast predict``'s
own arguments. The modes ``--no-overlay``, ``--overlay-style boundaries`` and ``--overlay-style
points`` run interleaved, ``--repeats`` times each; the JSON gives the median wall and CPU seconds
(``time.process_time``: less disturbed by a busy shared machine than the wall clock), the overlay's
added time as a ratio of the ``--no-overlay`` median of the same run, the largest peak RSS of the
process (``wait4``), and the overlay files' size against their inputs'. The load average is recorded
before and after: the machine is shared, so only ratios measured in the same run mean anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "300w_fullres_samples"
#: Each mode's ``labfast predict`` flags; ``boundaries`` is the default style (no flag, so a checkout
#: from before ``--overlay-style`` runs it too: ``--modes no-overlay,boundaries``).
MODES = {"no-overlay": ["--no-overlay"], "boundaries": [], "points": ["--overlay-style", "points"]}


def photo_paths() -> list[Path]:
    return sorted(path for path in PHOTOS.rglob("*") if path.suffix in (".jpg", ".png"))


def make_group_photo(path: Path, side: int) -> None:
    """The 12 photos' annotated faces tiled 4 x 3 into one ``side`` px wide JPEG (module docstring)."""
    from labfast.data import box_from_landmarks, read_pts
    from labfast.data.transforms import crop_matrix, face_centre_and_side, warp_crop

    tile = side // 4
    canvas = np.zeros((3 * tile, 4 * tile, 3), np.uint8)
    for number, photo in enumerate(photo_paths()):
        box = box_from_landmarks(read_pts(photo.with_suffix(".pts")) - 1)
        centre, crop_side = face_centre_and_side(box, margin=0.75)  # 2.5 x the box's longer side
        crop = warp_crop(cv2.imread(str(photo)), crop_matrix(centre, crop_side, tile), tile)
        row, column = divmod(number, 4)
        canvas[row * tile:(row + 1) * tile, column * tile:(column + 1) * tile] = crop
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])


def child(inputs: list[str], out: str, mode: str) -> None:
    """One timed ``predict_images`` in this process; prints ``{"seconds", "cpu_seconds"}`` (wall, and
    CPU time of the process, which a busy shared machine disturbs less)."""
    import time

    import torch

    from labfast.commands import predict
    from labfast.inference.aligner import FaceAligner

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    args = parser.parse_args([*inputs, "--out", out, "--device", "cpu", *MODES[mode]])
    aligner = FaceAligner(device="cpu", threads=1)
    aligner.predict(cv2.imread(str(ROOT / "data" / "300w_sample" / "fullres" / "image_0067.png")), heatmaps=True)
    images, _ = predict.collect_inputs(args.inputs, [])
    start, start_cpu = time.perf_counter(), time.process_time()
    predict.predict_images(aligner, images, args, None, [])
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu}))


def run_child(inputs: list[str], out: Path, mode: str) -> dict:
    process = subprocess.Popen([sys.executable, __file__, "--child", mode, str(out), *inputs],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{mode} on {inputs} failed with status {process.returncode}")
    return {**json.loads(output.strip().splitlines()[-1]), "peak_rss_mb": usage.ru_maxrss / 1024}


def overlay_sizes(inputs: list[Path], out: Path) -> dict:
    """Overlay bytes / input bytes, in all and for the worst file."""
    ratios, total_in, total_out = [], 0, 0
    for path in inputs:
        overlay = next(out.rglob(path.stem + ".*g"))  # .jpg or .png beside the .json
        ratios.append(overlay.stat().st_size / path.stat().st_size)
        total_in += path.stat().st_size
        total_out += overlay.stat().st_size
    return {"input_mb": round(total_in / 1e6, 2), "overlay_mb": round(total_out / 1e6, 2),
            "ratio": round(total_out / total_in, 2), "worst_file_ratio": round(max(ratios), 2)}


def measure(name: str, inputs: list[Path], given: list[str], modes: list[str], repeats: int, work: Path) -> dict:
    runs = {mode: [] for mode in modes}
    sizes = {}
    for repeat in range(repeats):
        for mode in modes:  # interleaved: the machine's load drifts alike for every mode
            out = work / f"{name}-{mode}-{repeat}"
            runs[mode].append(run_child(given, out, mode))
            if mode != "no-overlay" and repeat == 0:
                sizes[mode] = overlay_sizes(inputs, out)
            print(f"{name} {mode} #{repeat}: {runs[mode][-1]}", file=sys.stderr)
    result = {"inputs": len(inputs), "megapixels": round(sum(cv2.imread(str(p)).size / 3e6 for p in inputs), 1)}
    baseline = {clock: float(np.median([run[clock] for run in runs["no-overlay"]])) for clock in ("seconds", "cpu_seconds")}
    for mode, timed in runs.items():
        result[mode] = {"peak_rss_mb": round(max(run["peak_rss_mb"] for run in timed)), **({"files": sizes[mode]} if mode in sizes else {})}
        for clock in ("seconds", "cpu_seconds"):
            median = float(np.median([run[clock] for run in timed]))
            result[mode][clock] = {"median": round(median, 2), "runs": [round(run[clock], 2) for run in timed],
                                   "added": round(median / baseline[clock] - 1, 3)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group-side", type=int, default=4000)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ", ".join(MODES))
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, out, *inputs = args.child
        child(inputs, out, mode)
        return 0
    modes = args.modes.split(",")
    if not PHOTOS.is_dir():
        raise SystemExit(f"{PHOTOS} is absent: this benchmark needs ../shared/data beside the checkout")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        group = work / f"group_{args.group_side}.jpg"
        make_group_photo(group, args.group_side)
        result = {
            "device": f"{platform.processor() or platform.machine()} CPU ({os.cpu_count()} cores), 1 torch thread, 1 OpenCV thread",
            "date": datetime.date.today().isoformat(), "python": platform.python_version(), "opencv": cv2.__version__,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
            "load_average_before": [round(value, 2) for value in load_before],
            "photos_12": measure("photos", photo_paths(), [str(PHOTOS)], modes, args.repeats, work),
            f"group_{args.group_side}": measure("group", [group], [str(group)], modes, args.repeats, work),
        }
    result["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
