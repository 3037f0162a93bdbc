"""Measured rows of ``labfast bench`` beside their predicted time (``labfast.perf.roofline``):
``measured / predicted`` per row, on the ceiling of the GPU that measured them."""
from __future__ import annotations

from labfast.perf import devices


def ceiling_for(device_name: str) -> devices.Ceiling | None:
    """The measured ceiling of the GPU named ``device_name`` (H100 or H200), or ``None``."""
    lowered = device_name.lower()
    for ceiling in devices.ceilings():
        model = ceiling.name.split()[0].lower()
        if ceiling.name.endswith("measured") and model in lowered:
            return ceiling
    return None


def compare(rows: list[dict], predictions: list[dict], device_name: str) -> list[dict]:
    """Measured rows of ``labfast bench`` beside their predicted time: ``measured / predicted`` per row.

    Whole-model rows (``infer``, ``train``) are compared with the eager per-operator prediction
    (the reference path's traffic; a fused or compiled path should come in under it) and with the
    compute floor ``FLOPs / peak``; a training step's prediction adds the ground-truth heatmaps.
    Kernel rows are compared with the op's own bound (minimum traffic). Rows without a prediction
    at their batch and dtype are left out.
    """
    ceiling = ceiling_for(device_name)
    if ceiling is None:
        return []
    by_key = {(p["batch"], p["dtype"]): {row["name"]: row for row in p["rows"]} for p in predictions}
    out = []
    for row in rows:
        if row.get("median_ms") is None:
            continue
        predicted = by_key.get((row["batch"], row["dtype"]))
        if predicted is None:
            continue
        heatmaps = next((p for name, p in predicted.items() if name.startswith("boundary_heatmaps")), None)
        if row["section"] == "infer":
            model = predicted.get(f"inference batch {row['batch']}")
            extra = 0.0
        elif row["section"] == "train":
            model = predicted.get(f"training step batch {row['batch']} (without ground truth)")
            extra = heatmaps["bound_seconds"][ceiling.name] if heatmaps else 0.0
        elif row["section"] == "kernels":
            model = predicted.get(f"{row['case']} forward")
            extra = 0.0
        else:
            continue
        if model is None:
            continue
        floor = model["flops"] / ceiling.flops(row["dtype"]) + extra
        eager = (model["eager_seconds"] or model["bound_seconds"])[ceiling.name] + extra
        measured = row["median_ms"] / 1e3
        out.append({"section": row["section"], "case": row["case"], "backend": row["backend"],
                    "dtype": row["dtype"], "batch": row["batch"], "measured_ms": row["median_ms"],
                    "predicted_ms": eager * 1e3, "floor_ms": floor * 1e3,
                    "measured_over_predicted": measured / eager, "ceiling": ceiling.name})
    return out


def format_comparison(comparison: list[dict]) -> str:
    if not comparison:
        return "measured / predicted: no prediction for this device (labfast.perf.devices.ceilings knows H100 and H200)"
    lines = [f"Measured / predicted ({comparison[0]['ceiling']}; predicted = per-operator roofline of the "
             "reference's traffic, or the op's minimum traffic for kernels; floor = FLOPs / peak)",
             f"{'section':<8} {'case':<46} {'backend':<16} {'dtype':<5} {'batch':>5} {'measured ms':>12} "
             f"{'predicted ms':>13} {'floor ms':>9} {'ratio':>6}"]
    for c in comparison:
        lines.append(f"{c['section']:<8} {c['case'][:46]:<46} {c['backend']:<16} {c['dtype']:<5} {c['batch']:>5} "
                     f"{c['measured_ms']:>12.3f} {c['predicted_ms']:>13.3f} {c['floor_ms']:>9.3f} "
                     f"{c['measured_over_predicted']:>6.2f}")
    return "\n".join(lines)
