"""The LAB model: shapes, gradients, ablation switches, presets, memory format and autocast."""

from pathlib import Path

import pytest
import torch

from labfast import checkpoint, schemes
from labfast.model import LAB, LABConfig, config_by_name, losses
from labfast.model.estimator import boundary_neighbours


def _images(n: int = 2, size: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["wflw", "300w", "cofw", "aflw"])
def test_output_shapes_for_every_scheme(name):
    scheme = schemes.get(name)
    model = LAB(name, "tiny").eval()
    with torch.no_grad():
        out = model(_images())
    assert out.landmarks.shape == (2, scheme.num_points, 2)
    assert out.landmarks.dtype == torch.float32
    assert len(out.heatmaps) == model.config.stacks
    for heatmaps in out.heatmaps:
        assert heatmaps.shape == (2, scheme.num_boundaries, 64, 64)


def test_cross_data_set_predicts_the_boundaries_of_the_other_scheme():
    model = LAB("cofw", "tiny", boundary_scheme="300w").eval()
    with torch.no_grad():
        out = model(_images())
    assert out.landmarks.shape == (2, 29, 2)
    assert all(h.shape == (2, 13, 64, 64) for h in out.heatmaps)
    # the regressor's fused stem sees the image and its 13 boundary-masked copies
    assert model.regressor.stem[0].in_channels == 3 * (13 + 1)


def test_input_size_128_gives_32_pixel_heatmaps():
    model = LAB("300w", config_by_name("tiny", input_size=128)).eval()
    with torch.no_grad():
        out = model(_images(size=128))
    assert out.landmarks.shape == (2, 68, 2)
    assert all(h.shape == (2, 13, 32, 32) for h in out.heatmaps)


def test_wrong_image_size_is_refused_with_the_shape():
    model = LAB("300w", "tiny")
    with pytest.raises(ValueError, match=r"\(2, 3, 128, 128\)"):
        model(_images(size=128))


def test_zero_regression_maps_to_the_crop_centre():
    # The head's output is crop-normalised (0 = centre): pixel centres run 0 … 255, centre 127.5.
    model = LAB("aflw", "tiny").eval()
    torch.nn.init.zeros_(model.regressor.head.weight)
    torch.nn.init.zeros_(model.regressor.head.bias)
    with torch.no_grad():
        out = model(_images())
    assert torch.equal(out.landmarks, torch.full((2, 19, 2), 127.5))


def _assert_useful_gradients(parameters):
    missing = [name for name, p in parameters if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [name for name, p in parameters if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    zero = [name for name, p in parameters if not p.grad.any()]
    assert not zero, f"all-zero gradient for {zero}"


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    scheme = schemes.get("300w")
    model = LAB(scheme, "tiny").train()
    images = _images()
    target_heatmaps = torch.rand(2, 13, 64, 64)
    target_landmarks = torch.rand(2, 68, 2) * 256
    out = model(images)
    config = model.config
    loss = (
        config.heatmap_weight * losses.heatmap_loss(out.heatmaps, target_heatmaps)
        + config.landmark_weight * losses.landmark_loss(out.landmarks, target_landmarks, config.input_size)
        + config.adversarial_weight * losses.adversarial_loss(model.discriminator(out.heatmaps[-1]))
    )
    loss.backward()
    generator = [(n, p) for n, p in model.named_parameters()
                 if p.requires_grad and not n.startswith("discriminator.")]
    _assert_useful_gradients(generator)

    model.zero_grad(set_to_none=True)
    labels = losses.fake_labels(out.landmarks, target_landmarks, scheme, config)
    d_loss = losses.discriminator_loss(
        model.discriminator(target_heatmaps), model.discriminator(out.heatmaps[-1].detach()), labels
    )
    d_loss.backward()
    _assert_useful_gradients([(n, p) for n, p in model.discriminator.named_parameters()])
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("discriminator."))


def _message_passing_parameters(config: LABConfig, scheme) -> int:
    """Closed form: per stack one intra-level module over the neighbour graph, between stacks one
    inter-level module of K edges; each edge holds C·C·k·k weights and C biases."""
    per_edge = config.boundary_channels ** 2 * config.message_kernel ** 2 + config.boundary_channels
    intra = len(boundary_neighbours(scheme)) * per_edge
    inter = scheme.num_boundaries * per_edge
    return config.stacks * intra + (config.stacks - 1) * inter


def test_no_message_passing_removes_exactly_its_parameters():
    scheme = schemes.get("wflw")
    full = LAB(scheme, "tiny")
    ablated = LAB(scheme, config_by_name("tiny", message_passing=False)).eval()
    difference = full.parameter_counts()["inference"] - ablated.parameter_counts()["inference"]
    assert difference == _message_passing_parameters(full.config, scheme)
    with torch.no_grad():
        out = ablated(_images())
    assert out.heatmaps[-1].shape == (2, 13, 64, 64)


@pytest.mark.parametrize("stages", [(), (1,), (2, 3), (4,)])
def test_fusion_at_a_subset_of_stages(stages):
    full = LAB("300w", "tiny")
    ablated = LAB("300w", config_by_name("tiny", fusion_stages=stages)).eval()
    assert sorted(ablated.regressor.fusions) == [str(s) for s in stages]
    removed = sum(_count(full.regressor.fusions[str(s)]) for s in range(1, 5) if s not in stages)
    # without fusion after stage 4 the head reads C instead of 2C channels
    width4 = full.config.regressor_width * 8
    head_saving = 0 if 4 in stages else width4 * 2 * 68
    assert _count(full.regressor) - _count(ablated.regressor) == removed + head_saving
    with torch.no_grad():
        out = ablated(_images())
    assert out.landmarks.shape == (2, 68, 2)


def test_without_input_fusion_the_stem_sees_the_bare_image():
    full = LAB("300w", "tiny")
    ablated = LAB("300w", config_by_name("tiny", input_fusion=False)).eval()
    config = full.config
    assert ablated.regressor.stem[0].in_channels == 3
    saved = 3 * 13 * config.regressor_width * config.regressor_stem_kernel ** 2
    assert _count(full.regressor) - _count(ablated.regressor) == saved
    with torch.no_grad():
        assert ablated(_images()).landmarks.shape == (2, 68, 2)


def test_no_discriminator_leaves_the_inference_network_unchanged():
    with_d = LAB("300w", "tiny")
    without = LAB("300w", config_by_name("tiny", discriminator=False))
    assert without.discriminator is None
    assert without.parameter_counts()["discriminator"] == 0
    assert without.parameter_counts()["inference"] == with_d.parameter_counts()["inference"]
    assert with_d.parameter_counts()["discriminator"] > 0


def test_paper_config_parameter_count_matches_the_quoted_12_3_million():
    # Later comparison tables quote LAB at 12.3 M parameters (estimator + regressor, WFLW).
    counts = LAB("wflw", "paper").parameter_counts()
    assert abs(counts["inference"] - 12.3e6) <= 0.10 * 12.3e6, counts


def test_paper_regressor_is_a_full_width_resnet18_with_fusion_everywhere():
    config = config_by_name("paper")
    assert config.regressor_width == 64 and config.regressor_stem_kernel == 7
    assert config.fusion_stages == (1, 2, 3, 4)
    assert config.input_fusion and config.message_passing and config.discriminator


def test_small_config_stays_within_its_budget():
    assert LAB("wflw", "small").parameter_counts()["inference"] <= 1.5e6


def test_summary_reports_parameters_and_flops():
    model = LAB("300w", "tiny")
    summary = model.summary()
    assert summary["parameters"] == model.parameter_counts()
    assert summary["gmacs"] * 2 == pytest.approx(summary["gflops"])
    # the inference forward is the estimator and the regressor: the two parts cover the total
    assert summary["gflops_estimator"] + summary["gflops_regressor"] == pytest.approx(summary["gflops"])
    assert summary["gflops_estimator"] > 0 and summary["gflops_regressor"] > 0
    text = str(summary)
    assert "GFLOPs" in text and "GMACs" in text and "estimator" in text


def test_summary_flops_of_a_single_convolution_layer_by_hand():
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate: check our reading on the regressor's
    # fused stem, (3·14 → W, k×k, stride 2) at 256 → 128 output pixels.
    from torch.utils.flop_counter import FlopCounterMode

    model = LAB("300w", "tiny")
    stem = model.regressor.stem[0]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        stem(torch.zeros(1, stem.in_channels, 256, 256))
    k = stem.kernel_size[0]
    assert counter.get_total_flops() == 2 * stem.in_channels * stem.out_channels * k * k * 128 * 128


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    model = LAB("300w", "tiny").eval()
    images = _images()
    with torch.no_grad():
        reference = model(images)
        model = model.to(memory_format=torch.channels_last)
        out = model(images.to(memory_format=torch.channels_last))
    # Same fp32 arithmetic in another summation order: relative rounding ~1e-6 per layer, a few
    # dozen layers deep; landmarks are ×256 pixels, so 1e-5 relative is ~3e-3 px.
    for a, b in zip(reference.heatmaps, out.heatmaps):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.landmarks, reference.landmarks, rtol=0, atol=1e-2)


def test_bf16_autocast_with_channels_last_trains():
    torch.manual_seed(0)
    model = LAB("300w", "tiny").to(memory_format=torch.channels_last).train()
    images = _images().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        loss = (
            losses.heatmap_loss(out.heatmaps, torch.rand(2, 13, 64, 64))
            + losses.landmark_loss(out.landmarks, torch.rand(2, 68, 2) * 256, 256)
            + losses.adversarial_loss(model.discriminator(out.heatmaps[-1]))
        )
    assert out.heatmaps[-1].dtype == torch.bfloat16
    assert out.landmarks.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_per_image_normalisation_removes_brightness():
    model = LAB("300w", config_by_name("tiny", normalization="per_image"))
    images = _images()
    normalised = model.normalize(images)
    torch.testing.assert_close(model.normalize(images * 0.5 + 0.2), normalised, rtol=1e-4, atol=1e-4)
    assert normalised.mean(dim=(1, 2, 3)).abs().max() < 1e-5


def test_message_passing_goes_through_the_labfast_op(monkeypatch):
    from labfast import ops

    calls = []
    original = ops.message_passing

    def counting(features, weights, bias, edges):
        calls.append(len(edges))
        return original(features, weights, bias, edges)

    monkeypatch.setattr(ops, "message_passing", counting)
    model = LAB("300w", config_by_name("tiny", stacks=3)).eval()
    with torch.no_grad():
        model(_images(n=1))
    intra = len(boundary_neighbours(schemes.get("300w")))
    # per stack one intra-level round; between stacks one inter-level round of K = 13 edges
    assert calls == [intra, 13, intra, 13, intra]


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    model = LAB("cofw", config_by_name("tiny", fusion_stages=(1, 4)), boundary_scheme="300w").eval()
    path = tmp_path / "lab.pt"
    checkpoint.save(path, {**checkpoint.model_payload(model), "epoch": 3, "metrics": {"val_nme": 0.05}})
    torch.load(path, weights_only=True)  # tensors and plain data only: no pickled code
    rebuilt, info = checkpoint.load_model(path)
    assert info["config"] == model.config and (info["scheme"], info["boundary_scheme"]) == ("cofw", "300w")
    assert info["epoch"] == 3 and info["metrics"] == {"val_nme": 0.05}
    images = _images(n=1)
    with torch.no_grad():
        assert torch.equal(rebuilt(images).landmarks, model(images).landmarks)


def test_checkpoint_write_that_dies_midway_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"step": 1})

    def dies_midway(payload, target):  # checkpoint.save hands torch.save a temporary path
        Path(target).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, {"step": 2})
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert [entry.name for entry in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.mark.parametrize("kept", [0.0, 0.5, 0.99])
def test_truncated_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path, tiny_checkpoint, kept):
    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(checkpoint.CheckpointError, match=rf"checkpoint {path} is (empty \(0 bytes\): truncated|truncated or corrupt)"):
        checkpoint.load_model(path)


def test_a_foreign_torch_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": LAB("300w", "tiny").state_dict()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a labfast checkpoint"):
        checkpoint.load(path)


@pytest.mark.parametrize("normalization", ["imagenet", "per_image"])
def test_uint8_images_are_the_same_input_as_their_float_crop(normalization):
    """Crops travel to the device as uint8 and the model divides them by 255 there: the result is
    the float32 crop a host would have made (``x.astype(float32) / 255``), to the bit."""
    model = LAB("300w", config_by_name("tiny", input_size=64, normalization=normalization)).eval()
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    on_host = torch.from_numpy(pixels.numpy().astype("float32") / 255.0)
    assert torch.equal(model.normalize(pixels), model.normalize(on_host))
    with torch.no_grad():
        assert torch.equal(model(pixels).landmarks, model(on_host).landmarks)
