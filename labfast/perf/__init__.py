"""Performance tools, one job per module.

``labfast bench`` (measured): ``bench`` runs a ``plan`` of rows through the ``sections`` (train,
infer, heatmaps, kernels), each row measured by ``measure`` with the clock of ``timing`` on the
``backends`` it names, fed by ``inputs``; ``table`` prints and writes the result.
The predicted roofline: ``traffic`` (FLOPs and bytes of eager operators), ``op_traffic`` (the fused
ops' minimum traffic), ``roofline`` (the predicted table), ``comparison`` (measured / predicted),
``launches`` (kernel launches per forward). Shared: ``devices`` (what a measurement ran on and the
ceilings), ``op_calls`` (the fused-op calls the model makes). ``offline_compile``: every Triton
kernel compiled to sm_90 without a GPU.
"""
