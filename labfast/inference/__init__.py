"""Inference: the batched inference core, ``FaceAligner``, the CPU and CUDA-graph runtimes, face
detection, video tracking, overlays and export. Imports the model and data, never training."""
