"""The predicted roofline: its counts against independent arithmetic, on the meta device."""
import pytest
import torch
import torch.nn.functional as F

from labfast.perf import comparison, devices, launches, op_traffic, roofline
from labfast.perf.traffic import Prediction, recording


def test_grouped_convolution_backward_costs_twice_its_forward():
    # 13 groups of 4 -> 4 channels, 7x7, 16x16, batch 2: forward = 2 * N * Cout * (Cin / groups) * 7 * 7 * H * W
    forward = 2 * 2 * 52 * 4 * 7 * 7 * 16 * 16
    inputs = torch.zeros(2, 52, 16, 16, device="meta", requires_grad=True)
    weight = torch.zeros(52, 4, 7, 7, device="meta", requires_grad=True)
    with recording() as traffic:
        F.conv2d(inputs, weight, padding=3, groups=13).sum().backward()
    flops = {name: value for name, value, _ in traffic.per_operator}
    assert flops["aten.convolution.default"] == forward
    # grad of the input and of the weight: the forward's multiply-accumulates twice (torch's own
    # formula gives 14x the forward here, ignoring groups)
    assert flops["aten.convolution_backward.default"] == 2 * forward


def test_bytes_are_inputs_plus_outputs_and_views_move_nothing():
    a = torch.zeros(4, 8, device="meta")
    b = torch.zeros(4, 8, device="meta", dtype=torch.bfloat16)
    with recording() as traffic:
        a.view(8, 4).t()
        b.float() + a
    assert [name for name, _, _ in traffic.per_operator] == ["aten._to_copy.default", "aten.add.Tensor"]
    to_copy, add = traffic.per_operator
    assert to_copy[2] == 32 * 2 + 32 * 4
    assert add[2] == 3 * 32 * 4
    assert traffic.calls == 2 and traffic.bytes == to_copy[2] + add[2]


def test_message_passing_prediction_matches_its_convolutions():
    from labfast.ops.message_passing import message_passing_ref

    rows = {row.name: row for row in op_traffic.fused_op_predictions("tiny", 2, "fp32")}
    name = next(n for n in rows if n.startswith("message_passing") and n.endswith("forward"))
    shape = tuple(int(v) for v in name.split()[1].split("x"))
    edges = int(name.split("E=")[1].split()[0])
    kernel = int(name.split("k=")[1].split()[0])
    channels = shape[1] // 13  # K = 13 boundaries of 300-W
    features = torch.zeros(shape, device="meta")
    weights = torch.zeros(edges, channels, channels, kernel, kernel, device="meta")
    graph = tuple((e % 13, (e + 1) % 13) for e in range(edges))
    with recording() as traffic:
        message_passing_ref(features, weights, None, graph)
    convolution = sum(f for n, f, _ in traffic.per_operator if "convolution" in n)
    assert rows[name].flops == convolution
    assert rows[name.replace("forward", "backward")].flops == 2 * convolution
    # minimum traffic: features in and out, weights and biases (E, C) once
    assert rows[name].bytes == (2 * features.numel() + weights.numel() + edges * channels) * 4


def test_batch_norm_act_prediction_counts_its_passes_over_the_activation():
    """Forward: x twice (statistics, then the pass), out once (+ the residual read); backward: grad
    and x twice, grad x once (+ out twice and grad residual once with a residual)."""
    rows = {row.name: row for row in op_traffic.fused_op_predictions("tiny", 2, "fp32")}
    plain, residual = "batch_norm_act 2x8x128x128", "batch_norm_act 2x32x8x8 + residual"
    assert rows[f"{plain} forward"].bytes == 3 * 2 * 8 * 128 * 128 * 4
    assert rows[f"{plain} backward"].bytes == 5 * 2 * 8 * 128 * 128 * 4
    assert rows[f"{residual} forward"].bytes == 4 * 2 * 32 * 8 * 8 * 4
    assert rows[f"{residual} backward"].bytes == 8 * 2 * 32 * 8 * 8 * 4


def test_batch_norm_act_step_row_sets_every_call_fused_beside_unfused():
    ceiling = devices.Ceiling("test", 100e12, 10e12, 1e12, "made up")
    row = op_traffic.batch_norm_act_step_prediction("tiny", 2, "fp32", [ceiling])
    assert row.name.startswith("batch_norm_act: 130 calls")  # every BN-ReLU of one tiny-LAB forward
    # the unfused reference moves more than the fused kernels: batch_norm, relu (add) and their backward
    assert row.eager_seconds["test"] > row.bound_seconds(ceiling, "fp32") > 0


def test_prediction_bound_is_the_slower_of_compute_and_memory():
    ceiling = devices.Ceiling("test", 100e12, 10e12, 1e12, "made up")
    compute_bound = Prediction("a", "fused op", flops=int(1e12), bytes=int(1e6))
    memory_bound = Prediction("b", "fused op", flops=int(1e6), bytes=int(1e9))
    assert compute_bound.bound_seconds(ceiling, "bf16") == pytest.approx(1e12 / 100e12)
    assert memory_bound.bound_seconds(ceiling, "bf16") == pytest.approx(1e9 / 1e12)
    on_cuda_cores = Prediction("c", "fused op", flops=int(1e12), bytes=int(1e6), compute="cuda cores")
    assert on_cuda_cores.bound_seconds(ceiling, "bf16") == pytest.approx(1e12 / 10e12)


def test_training_step_costs_about_three_forwards():
    inference = roofline.inference_traffic("tiny", 2, "fp32")
    train = roofline.train_step_traffic("tiny", 2, "fp32")
    # backward = 2 forwards except the stem's input gradient; plus the discriminator's passes
    assert 2.5 < train.flops / inference.flops < 3.2
    assert train.calls > 2 * inference.calls


def test_predicted_table_on_the_tiny_preset():
    result = roofline.predict("tiny", 2, "bf16")
    names = [row["name"] for row in result["rows"]]
    assert names[:3] == ["inference batch 2", "inference batch 1", "training step batch 2 (without ground truth)"]
    assert any(name.startswith("boundary_heatmaps") for name in names)
    for row in result["rows"]:
        assert row["flops"] > 0 and row["bytes"] > 0
        for ceiling in result["ceilings"]:
            assert row["bound_seconds"][ceiling["name"]] > 0
    groups = {g["group"]: g for g in result["train_step_groups"]}
    assert groups["convolution"]["flops"] > 0 and groups["batch norm"]["flops"] == 0
    text = roofline.format_prediction(result)
    assert "H100 measured" in text and "training step batch 2" in text


def test_ceilings_state_their_figures():
    by_name = {c.name: c for c in devices.ceilings()}
    assert by_name["H100 datasheet"].bf16_flops == pytest.approx(1979e12 / 2)
    assert by_name["H100 measured"].bandwidth == pytest.approx(3.0e12)
    assert by_name["H200 measured"].bandwidth == pytest.approx(4.3e12)
    assert all(c.source for c in by_name.values())


def test_measured_rows_are_read_against_the_prediction_of_their_device():
    prediction = roofline.predict("tiny", 2, "bf16")
    rows = {row["name"]: row for row in prediction["rows"]}
    kernel = next(name for name in rows if name.startswith("feature_fusion") and name.endswith("forward"))
    measured = [
        {"section": "infer", "case": "LAB tiny forward", "backend": "fast", "dtype": "bf16", "batch": 2, "median_ms": 1.0},
        {"section": "train", "case": "LAB tiny step", "backend": "fast", "dtype": "bf16", "batch": 2, "median_ms": 4.0},
        {"section": "kernels", "case": kernel[:-len(" forward")], "backend": "fast (triton)", "dtype": "bf16",
         "batch": 2, "median_ms": 0.01},
        {"section": "infer", "case": "LAB tiny forward", "backend": "fast", "dtype": "bf16", "batch": 32, "median_ms": 1.0},
        {"section": "infer", "case": "LAB tiny forward", "backend": "fast", "dtype": "bf16", "batch": 2, "median_ms": None},
    ]
    compared = comparison.compare(measured, [prediction], "NVIDIA H200")
    assert [(c["section"], c["batch"]) for c in compared] == [("infer", 2), ("train", 2), ("kernels", 2)]
    infer, train, kernels = compared
    assert all(c["ceiling"] == "H200 measured" for c in compared)
    assert infer["predicted_ms"] == pytest.approx(rows["inference batch 2"]["eager_seconds"]["H200 measured"] * 1e3)
    heatmaps = next(r for n, r in rows.items() if n.startswith("boundary_heatmaps"))["bound_seconds"]["H200 measured"]
    train_eager = rows["training step batch 2 (without ground truth)"]["eager_seconds"]["H200 measured"]
    assert train["predicted_ms"] == pytest.approx((train_eager + heatmaps) * 1e3)
    assert kernels["predicted_ms"] == pytest.approx(rows[kernel]["bound_seconds"]["H200 measured"] * 1e3)
    assert infer["measured_over_predicted"] == pytest.approx(1.0 / infer["predicted_ms"])
    assert comparison.compare(measured, [prediction], "NVIDIA A100-SXM4-80GB") == []
    assert "H200 measured" in comparison.format_comparison(compared)


def test_bench_predict_on_a_cpu_writes_the_prediction_instead_of_measuring(tmp_path, capsys):
    import json

    from labfast import cli

    path = tmp_path / "bench.json"
    assert cli.main(["bench", "--predict", "--config", "tiny", "--batch", "1,2", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert "rows" not in result and [p["batch"] for p in result["prediction"]] == [2]
    assert "Predicted roofline: config tiny, fp32, batch 2" in (out := capsys.readouterr().out)
    assert "kernel launches per inference forward" in out
    assert [row["backend"] for row in result["launch_counts"]] == ["reference", "triton"]


def test_bench_predict_without_json_writes_no_file(tmp_path, monkeypatch, capsys):
    from labfast import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--predict", "--config", "tiny", "--batch", "1", "--device", "cpu"]) == 0
    assert "Predicted roofline: config tiny" in (out := capsys.readouterr().out) and "wrote" not in out
    assert list(tmp_path.iterdir()) == []


def test_composite_operators_under_inference_mode_are_counted_by_their_parts():
    # under inference_mode conv2d reaches the mode undecomposed; its FLOPs are its convolution's
    inputs = torch.zeros(2, 8, 16, 16)
    weight = torch.zeros(4, 8, 3, 3)
    with torch.inference_mode(), recording() as traffic:
        F.conv2d(inputs, weight, padding=1)
    assert traffic.flops == 2 * 2 * 4 * 8 * 3 * 3 * 16 * 16


def test_launch_counts_see_each_fused_op_as_its_kernels():
    from labfast.model import LAB, config_by_name
    from labfast.model.batch_norm_act import BatchNormAct

    config = config_by_name("tiny")
    batch_norms = sum(isinstance(module, BatchNormAct) for module in LAB("300w", config).modules())
    reference = launches.launch_count("tiny", 1, "reference")
    fast = launches.launch_count("tiny", 1, "triton")
    assert reference["triton"] == 0 and reference["total"] == reference["operators"]
    # one intra-level message passing per stack, one inter-level between consecutive stacks; one
    # input fusion; one M ⊕ F and one F ⊕ (F ⊗ T) per ResNet stage (4); one batch norm + ReLU per
    # BatchNormAct: each one kernel
    assert fast["kernels"] == {"_message_passing_forward_kernel": 2 * config.stacks - 1,
                               "_input_fusion_fwd_kernel": 1, "_feature_concat_fwd_kernel": 4,
                               "_feature_fusion_fwd_kernel": 4, "_batch_norm_act_forward_kernel": batch_norms}
    assert fast["labfast_ops"] == fast["triton"]  # each fast path is one labfast:: operator, not added to the total
    assert fast["total"] == fast["operators"] + fast["triton"]
    text = launches.format_launch_counts([reference, fast])
    assert f"tiny         1 reference  {reference['operators']:>9}       0 {reference['total']:>7}" in text


def test_launch_counts_refuse_a_backend_they_cannot_count():
    with pytest.raises(ValueError, match="launch counts are for backends"):
        launches.launch_count("tiny", 1, "cuda")
