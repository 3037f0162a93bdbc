"""The sections of ``labfast bench``, one module each: its cases, how one backend's call is
prepared, and its rows (``measure(rows, config, batch, dtype, backends)``)."""
from labfast.perf.sections import heatmaps, infer, kernels, train

MEASURE = {"train": train.measure, "infer": infer.measure, "heatmaps": heatmaps.measure, "kernels": kernels.measure}
SECTIONS = tuple(MEASURE)
