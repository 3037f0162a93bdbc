"""``labfast bench``: measure training, inference, heatmaps and kernels on this device (``labfast.perf``)."""
from __future__ import annotations

from pathlib import Path

import torch

from labfast.perf.bench import run_benchmarks
from labfast.perf.devices import environment
from labfast.perf.plan import settings_from_args
from labfast.perf.table import format_table, write_json


def add_arguments(parser) -> None:
    parser.add_argument("--what", default="all", help="train, infer, heatmaps, kernels or all (comma-separated)")
    parser.add_argument("--batch", default=None, help="batch sizes (default 1,32,256 on a GPU, 1,2 on a CPU)")
    parser.add_argument("--dtype", default=None, help="fp32, bf16 (default fp32,bf16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--backend", default=None,
                        help="reference, compile, fast (fast: eager, +compile, +cudagraphs; see the module doc); default "
                             "all three on a GPU, reference,fast on a CPU (compiling takes minutes there: opt in)")
    parser.add_argument("--plan", default=None,
                        help="rows in this order instead of --what x --batch: SECTION@BATCH[=BACKEND,...] entries "
                             "separated by ';', e.g. 'infer@256=reference,fast+compile;infer@1=fast+cudagraphs;kernels@256' "
                             "(backends as the rows name them; none given: those of --backend)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: rows not begun by then are recorded as skipped (a row once begun runs to its end)")
    parser.add_argument("--config", default=None, choices=("paper", "small", "tiny"),
                        help="model preset (default paper on a GPU; on a CPU the shipped weights' preset, small)")
    parser.add_argument("--repeats", type=int, default=10, help="at least this many timed calls per row")
    parser.add_argument("--min-time", type=float, default=None,
                        help="and at least this many seconds of timed calls per row (default 1 on a GPU, 0.2 on a CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (torch.set_num_threads; default torch's); on a shared CPU "
                             "1 thread avoids the spin-waiting of oversubscribed threads")
    parser.add_argument("--predict", action="store_true",
                        help="also print the predicted roofline (labfast.perf.roofline) of --config at the largest --batch "
                             "and its kernel launches per batch-1 forward (counted on the CPU), "
                             "per --dtype, and measured / predicted per row; on a CPU the prediction replaces the "
                             "measurement (its ceilings are H100 and H200)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the result as JSON to PATH, rewritten after every row (default: no file)")


def run(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = settings_from_args(args, device)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"labfast bench: --threads {args.threads} must be at least 1")
        torch.set_num_threads(args.threads)
    if device.type == "cpu" and "compile" in settings.groups:
        print("torch.compile on the CPU: each compiled row first compiles (minutes on a small CPU); "
              "that warm-up is reported per row as warmup_s in the JSON (--json)")
    path = Path(args.json) if args.json is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    predictions = launches = None
    if args.predict:
        predictions, launches = _print_prediction(settings)
        if device.type != "cuda":
            _write(path, {"environment": environment(device), "prediction": predictions, "launch_counts": launches},
                   f" (the prediction only: on a {device.type} there is no GPU row to compare)")
            return 0
    result = run_benchmarks(settings, device, on_row=(lambda partial: write_json(path, partial)) if path else None)
    print(format_table(result))
    if predictions is not None:
        from labfast.perf import comparison

        result["prediction"] = predictions
        result["launch_counts"] = launches
        result["measured_over_predicted"] = comparison.compare(result["rows"], predictions, result["device"]["name"])
        print(comparison.format_comparison(result["measured_over_predicted"]))
    _write(path, result)
    return 0


def _print_prediction(settings) -> tuple[list[dict], list[dict]]:
    """The predicted roofline of the preset at the largest batch, per dtype, and the launch counts
    of a batch-1 forward, printed; returned for the JSON."""
    from labfast.perf import launches, roofline

    batch = max(settings.batches)
    predictions = [roofline.predict(settings.config, batch, dtype) for dtype in settings.dtypes]
    for prediction in predictions:
        print(roofline.format_prediction(prediction) + "\n")
    counts = [launches.launch_count(settings.config, 1, backend) for backend in launches.LAUNCH_BACKENDS]
    print(launches.format_launch_counts(counts) + "\n")
    return predictions, counts


def _write(path: Path | None, result: dict, what: str = "") -> None:
    if path is not None:
        write_json(path, result)
        print(f"wrote {path}{what}")
