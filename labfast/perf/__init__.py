"""Performance tools: benchmarks of training, inference and kernels, the roofline, device ceilings
and the offline compile of the Triton kernels."""
