"""A predicted roofline of LAB at the model's shapes: FLOPs, bytes, intensity and the time a GPU's peaks allow.

Nothing here runs on a GPU: the model runs on the ``meta`` device (shapes only) and
``labfast.perf.traffic`` records every aten operator eager PyTorch would launch, with its FLOPs
(2 per multiply-accumulate of convolutions and matrix products; element-wise work counts 0, as in
``labfast bench``) and its bytes (tensor inputs and outputs: what an *unfused* eager step must
move at least). The eager prediction of a whole step is the sum of ``max(FLOPs / peak, bytes /
bandwidth)`` over its operators (no overlap, no launch overhead: the launch count,
``labfast.perf.launches``, is reported beside it, and at batch 1 it decides). The fused ops of
``labfast.ops`` are predicted from their own minimum traffic (``labfast.perf.op_traffic``).
Ceilings: ``labfast.perf.devices.ceilings`` (datasheet and measured).

This is the model a measured run is read against: ``labfast bench --predict`` prints it beside
(or, without a GPU, instead of) the measured table, and ``labfast.perf.comparison`` divides a
measured row by its predicted row: how far a path is from what the device allows.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

import torch

from labfast.perf import devices
from labfast.perf.backends import forced_backend
from labfast.perf.inputs import DTYPES, meta_images, meta_model
from labfast.perf.op_traffic import batch_norm_act_step_prediction, fused_op_predictions, heatmaps_prediction
from labfast.perf.traffic import Prediction, Traffic, operator_group, recording


def inference_traffic(config_name: str, batch: int, dtype: str, scheme: str = "300w") -> Traffic:
    """Every operator of ``model(images)`` in eval mode, reference ops (what eager launches)."""
    model = meta_model(config_name, scheme, dtype, train=False)
    images = meta_images(model, batch, dtype)
    with torch.no_grad(), forced_backend("reference"), recording() as traffic:
        model(images)
    return traffic


def train_step_traffic(config_name: str, batch: int, dtype: str, scheme: str = "300w") -> Traffic:
    """Every operator of one LAB training step but the ground-truth heatmaps (predicted on their own).

    The step of ``labfast.train.step.train_step``: forward, heatmap + landmark + adversarial losses,
    backward, Adam on estimator + regressor, then the discriminator on real and estimated heatmaps,
    its backward and its Adam step. In ``bf16`` the model's tensors are bf16 throughout (autocast
    keeps a few reductions in fp32; the difference is small next to the activations).
    """
    from labfast.model import losses

    model = meta_model(config_name, scheme, dtype, train=True)
    images = meta_images(model, batch, dtype)
    heatmap = model.config.heatmap_size
    num_boundaries = model.boundary_scheme.num_boundaries
    target = torch.zeros(batch, num_boundaries, heatmap, heatmap, device="meta", dtype=DTYPES[dtype])
    landmarks = torch.zeros(batch, model.scheme.num_points, 2, device="meta")
    generator = [p for name, p in model.named_parameters() if not name.startswith("discriminator.")]
    optimizer = torch.optim.Adam(generator, foreach=True)
    d_optimizer = torch.optim.Adam(model.discriminator.parameters(), foreach=True)
    for group in (*optimizer.param_groups, *d_optimizer.param_groups):  # Adam's step counters live on the CPU
        group["capturable"] = False
    with forced_backend("reference"), recording() as traffic:
        output = model(images)
        loss = (losses.heatmap_loss(output.heatmaps, target)
                + losses.landmark_loss(output.landmarks, landmarks, model.config.input_size)
                + losses.adversarial_loss(model.discriminator(output.heatmaps[-1])))
        loss.backward()
        optimizer.step()
        logits = model.discriminator(torch.cat([target, output.heatmaps[-1].detach()]))
        d_loss = logits.float().square().mean()  # the BCE's shape of work: one reduction over (2N,)
        d_loss.backward()
        d_optimizer.step()
    return traffic


def model_prediction(name: str, traffic: Traffic, dtype: str, ceilings: list[devices.Ceiling]) -> Prediction:
    return Prediction(name, "model", traffic.flops, traffic.bytes, traffic.calls,
                      {c.name: traffic.seconds(c, dtype) for c in ceilings},
                      note="bytes: unfused eager traffic (every operator's inputs and outputs)")


def predict(config_name: str = "paper", batch: int = 256, dtype: str = "bf16",
            ceilings: list[devices.Ceiling] | None = None) -> dict[str, Any]:
    """The whole predicted table for ``labfast bench --predict`` (plain data, JSON-ready)."""
    from labfast import schemes

    ceilings = ceilings or devices.ceilings()
    num_boundaries = schemes.get("300w").num_boundaries
    inference = inference_traffic(config_name, batch, dtype)
    inference_one = inference_traffic(config_name, 1, dtype)
    train = train_step_traffic(config_name, batch, dtype)
    heatmap_size = meta_model(config_name, "300w", dtype, train=False).config.heatmap_size
    rows = [
        model_prediction(f"inference batch {batch}", inference, dtype, ceilings),
        model_prediction("inference batch 1", inference_one, dtype, ceilings),
        model_prediction(f"training step batch {batch} (without ground truth)", train, dtype, ceilings),
        heatmaps_prediction(batch, num_boundaries, heatmap_size, dtype),
        *fused_op_predictions(config_name, batch, dtype),
        batch_norm_act_step_prediction(config_name, batch, dtype, ceilings),
    ]
    return {
        "config": config_name, "batch": batch, "dtype": dtype,
        "ceilings": [dataclasses.asdict(c) for c in ceilings],
        "rows": [_row_dict(row, ceilings, dtype) for row in rows],
        "train_step_groups": _groups(train, ceilings, dtype),
    }


def _row_dict(row: Prediction, ceilings: list[devices.Ceiling], dtype: str) -> dict:
    return {**dataclasses.asdict(row), "intensity": row.intensity,
            "bound_seconds": {c.name: row.bound_seconds(c, dtype) for c in ceilings}}


def _groups(traffic: Traffic, ceilings: list[devices.Ceiling], dtype: str) -> list[dict]:
    """Operator families of a step, largest predicted time first: where fusion could save the most."""
    reference = ceilings[0]
    seconds_by_group: dict[str, float] = collections.defaultdict(float)
    for name, seconds in traffic.operator_seconds(reference, dtype):
        seconds_by_group[operator_group(name)] += seconds
    rows = []
    for group, (calls, flops, moved) in traffic.by_group().items():
        seconds = seconds_by_group[group]
        rows.append({"group": group, "calls": calls, "flops": flops, "bytes": moved,
                     "seconds": seconds, "ceiling": reference.name})
    return sorted(rows, key=lambda r: -r["seconds"])


def format_prediction(result: dict) -> str:
    """The predicted table as text: one line per row, predicted time per ceiling."""
    names = [c["name"] for c in result["ceilings"]]
    lines = [f"Predicted roofline: config {result['config']}, {result['dtype']}, batch {result['batch']} "
             f"(meta-device trace; no GPU ran)",
             "Ceilings: " + "; ".join(f"{c['name']}: {c['bf16_flops'] / 1e12:.0f} TFLOP/s bf16, "
                                      f"{c['fp32_flops'] / 1e12:.0f} fp32, {c['bandwidth'] / 1e12:.2f} TB/s "
                                      f"({c['source']})" for c in result["ceilings"])]
    header = f"{'row':<58} {'GFLOP':>9} {'MB':>9} {'FLOP/B':>7} {'calls':>6} " + " ".join(
        f"{'bound ' + n:>24}" for n in names)
    lines += [header, "-" * len(header)]
    for row in result["rows"]:
        calls = "" if row["calls"] is None else str(row["calls"])
        cells = []
        for name in names:
            bound = row["bound_seconds"][name] * 1e3
            cell = f"{bound:.3f} ms"
            if row["eager_seconds"]:
                cell += f" (eager {row['eager_seconds'][name] * 1e3:.2f})"
            cells.append(f"{cell:>24}")
        lines.append(f"{row['name'][:58]:<58} {row['flops'] / 1e9:>9.2f} {row['bytes'] / 1e6:>9.1f} "
                     f"{row['intensity']:>7.1f} {calls:>6} " + " ".join(cells))
    lines.append("")
    lines.append(f"Training step by operator family ({result['train_step_groups'][0]['ceiling']}, "
                 "per-operator roofline; what fusion could remove is the memory-bound families' time):")
    for group in result["train_step_groups"]:
        lines.append(f"  {group['group']:<26} {group['calls']:>6} calls {group['bytes'] / 1e9:>8.2f} GB "
                     f"{group['flops'] / 1e12:>8.3f} TFLOP {group['seconds'] * 1e3:>8.2f} ms")
    return "\n".join(lines)
