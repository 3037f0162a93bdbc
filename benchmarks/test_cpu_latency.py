"""Per-face CPU latency given a face box: labfast's shipped small model against dlib's 68-point predictor.

Cases, all on real 300-W faces with their annotated boxes, measured **interleaved** (one call of
every case per round, so that a neighbour's load on a shared CPU falls on all cases alike):

- ``dlib``: ``dlib.shape_predictor`` (``shape_predictor_68_face_landmarks.dat`` from
  ``face-recognition-models``) on the RGB photo and the box, one thread (dlib's predictor is serial),
  through ``labfast.evaluation.dlib_reference`` (``labfast eval --dataset wild --latency`` times the same);
- ``labfast onnxruntime``: ``FaceAligner(runtime="onnxruntime").predict(photo, boxes=box)``, the
  CPU default (crop, model, mapping back);
- ``labfast torch``: the same with eager PyTorch (``runtime="torch"``, ``inference_mode``);
- ``... 2 threads``: the two labfast runtimes on two threads, for the thread default.

dlib is a benchmark-only extra (``pip install labfast[benchmark]``, i.e. ``dlib-bin`` and
``face-recognition-models``); without it its case is left out (the pytest case skips).

    python benchmarks/test_cpu_latency.py --rounds 100 --json benchmarks/results/cpu-latency-<date>.json
    pytest benchmarks/test_cpu_latency.py        # a short run; checks the CPU default beats eager
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from labfast.evaluation.wild import dlib_aligner
from labfast.perf import devices
from labfast.inference.aligner import FaceAligner
from labfast.data import read_300w
from labfast.commands.demo import BUNDLED_DATA


def cases(faces: list, threads: tuple[int, ...] = (1, 2)) -> dict:
    """Name -> ``call(index)`` that aligns face ``index % len(faces)`` given its box."""
    photos = [cv2.imread(face.image_path) for face in faces]
    made = {}
    reference = dlib_aligner()
    if reference is not None:
        rgb = [reference.rgb(photo) for photo in photos]
        made["dlib shape_predictor 68"] = lambda i: reference.landmarks(rgb[i % len(faces)], faces[i % len(faces)].box)
    for runtime in ("onnxruntime", "torch"):
        for count in threads:
            aligner = FaceAligner(device="cpu", runtime=runtime, threads=count, batch_size=1)

            def call(i, aligner=aligner, count=count):
                torch.set_num_threads(count)  # the setting is process-wide: each case gets its own
                return aligner.predict(photos[i % len(faces)], boxes=faces[i % len(faces)].box[None])
            made[f"labfast {runtime}, {count} thread{'s' if count > 1 else ''}"] = call
    return made


def measure(rounds: int, faces: list, threads: tuple[int, ...] = (1, 2), warmup: int = 3) -> dict:
    """Interleaved per-call times: name -> {"median_ms", "min_ms", "p90_ms", "rounds"}."""
    made = cases(faces, threads)
    times = {name: [] for name in made}
    for index in range(warmup + rounds):
        for name, call in made.items():
            start = time.perf_counter()
            call(index)
            if index >= warmup:
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: {"median_ms": statistics.median(values), "min_ms": min(values),
                   "p90_ms": float(np.percentile(values, 90)), "rounds": len(values)} for name, values in times.items()}


def optional_versions() -> dict:
    """Versions of the runtimes measured here that ``labfast.perf.devices.versions`` does not list."""
    found = {}
    for name in ("onnxruntime", "dlib"):
        if importlib.util.find_spec(name) is not None:
            found[name] = __import__(name).__version__
    return found


def describe_machine() -> dict:
    """CPU, cores, the load other processes put on it while measured, versions, date."""
    return {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "load_average": list(os.getloadavg()), "versions": {**devices.versions(), **optional_versions()},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def format_rows(rows: dict) -> str:
    reference = rows.get("dlib shape_predictor 68", {}).get("median_ms")
    lines = [f"{'case':<34}{'median ms':>10}{'min ms':>9}{'p90 ms':>9}{'vs dlib':>9}"]
    for name, row in rows.items():
        ratio = f"{row['median_ms'] / reference:.1f}x" if reference else "-"
        lines.append(f"{name:<34}{row['median_ms']:>10.2f}{row['min_ms']:>9.2f}{row['p90_ms']:>9.2f}{ratio:>9}")
    return "\n".join(lines)


def test_cpu_default_runtime_is_faster_than_eager_on_one_thread():
    """The optimised path earns its place: in the same interleaved run, ONNX Runtime's median per-face
    latency is below eager PyTorch's (measured 3-4x on the shared 2-core machine)."""
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed")
    rows = measure(rounds=15, faces=read_300w(BUNDLED_DATA, "common")[:5], threads=(1,))
    print("\n" + format_rows(rows))
    assert rows["labfast onnxruntime, 1 thread"]["median_ms"] < rows["labfast torch, 1 thread"]["median_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--faces", type=int, default=20, help="bundled 300-W faces cycled through")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = measure(args.rounds, read_300w(BUNDLED_DATA, "common")[:args.faces])
    report = {"machine": describe_machine(), "rows": rows}
    print(json.dumps(report["machine"]))
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
