"""The training step's speed switches (``labfast.train.speed``) change its speed, not its results.

How "unchanged" is judged (the rule of flash-attention's tests): the plain step run in float64 is
the truth; the plain float32 step's distance from it is the rounding error float32 arithmetic
makes in this network on this batch; a switched float32 step computes the same function in
another order (a dense convolution's sums, Inductor's fused loops and reductions), so its distance
from the truth must be of the same size. For each loss term and for the gradient of each part
(estimator, regressor, discriminator, all its parameters as one vector), in the 2-norm:

    |switched - truth| <= 4 |plain - truth| + slack

4: two float32 evaluations of one function in different orders err alike, not identically. The
slack covers a value that the plain step happens to round exactly (error 0) while another order
may not: for a gradient, ``4 u |truth|`` (u = 2**-24, a few roundings); for a loss term, a mean
of at most n non-negative terms (n = stacks·N·K·h·w of the heatmap loss, the most), summing them in
another order errs by at most ``(n - 1) u |truth|`` (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., eq. 4.4). A wrong term (a lost message, a misplaced heatmap) is off by
O(|truth|): 10^3 times that slack, and about 10^5 times the plain step's rounding error here.

The truth's losses take their final reductions in float32 (``heatmap_loss`` and the landmark
output cast to float32 as the model is written): a rounding of ``u`` relative, far below the
float32 step's error through the network.
"""
import pytest
import torch

from labfast.ops.boundary_heatmaps import squared_distance_ref
from labfast.train.build import build_model, to_training_device
from labfast.train.runtime import Runtime
from labfast.train.step import build_trainer, train_step
from labfast.train.targets import boundary_targets, boundary_targets_compiled
from tiny_runs import tiny_config

UNIT_ROUNDOFF = 2.0**-24
SIZE = 64


def _trainer(*assignments: str):
    config = tiny_config(f"input_size={SIZE}", *assignments)
    torch.manual_seed(0)  # every trainer starts from the same weights
    return build_trainer(to_training_device(build_model(config), config, torch.device("cpu")), config, Runtime())


def _batch(count: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    landmarks = SIZE * (0.15 + 0.7 * torch.rand(count, 68, 2, generator=generator))
    return images, landmarks


def _losses_and_gradients(trainer, images, landmarks):
    """Loss terms and the gradient of each part, in float64, from ``trainer``'s losses function."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    terms, _, _ = trainer.losses(trainer.forward, model.config, model.discriminator, images, landmarks,
                                 model.boundary_scheme, SIZE, trainer.config.sigma, True)
    sum(terms.values()).backward()
    parts = {part: torch.cat([p.grad.double().flatten() for p in getattr(model, part).parameters()])
             for part in ("estimator", "regressor", "discriminator")}
    return {**{name: value.detach().double() for name, value in terms.items()}, **parts}


def _truth(images, landmarks, *assignments: str):
    trainer = _trainer(*assignments)
    trainer.model.double()
    return _losses_and_gradients(trainer, images.double() / 255, landmarks)


def _summed_terms(trainer, images) -> int:
    """n of a loss term's slack: the heatmap loss sums stacks·N·K·h·w non-negative terms, the most of any."""
    config = trainer.model.config
    return config.stacks * len(images) * trainer.model.boundary_scheme.num_boundaries * config.heatmap_size**2


def _assert_as_accurate_as_the_plain_step(switched, plain, truth, summed_terms: int):
    """``summed_terms``: n of the slack of a loss term (module docstring)."""
    assert switched.keys() == plain.keys() == truth.keys()
    for name, exact in truth.items():
        plain_error = (plain[name] - exact).norm().item()
        roundings = summed_terms - 1 if exact.dim() == 0 else 4
        allowed = 4 * plain_error + roundings * UNIT_ROUNDOFF * exact.norm().item()
        error = (switched[name] - exact).norm().item()
        assert error <= allowed, f"{name}: error {error:.3e} > {allowed:.3e} (plain step's {plain_error:.3e})"


def test_dense_message_passing_gives_the_plain_steps_losses_and_gradients():
    images, landmarks = _batch()
    trainer = _trainer()
    plain = _losses_and_gradients(trainer, images, landmarks)
    dense = _losses_and_gradients(_trainer("dense_message_passing=true"), images, landmarks)
    _assert_as_accurate_as_the_plain_step(dense, plain, _truth(images, landmarks), _summed_terms(trainer, images))


#: The compiled step's model: the tiny one cut to one stack of depth 1 and one fusion stage, every part
#: (estimator, message passing, fusion, regressor, discriminator) still there. Inductor's time
#: grows with the graph's operators, not with tensor sizes: this graph compiles in a fraction of
#: the tiny model's time.
ONE_STACK = ("model.stacks=1", "model.hourglass_depth=1", "model.fusion_stages=1")


@pytest.mark.inductor
def test_compiled_step_gives_the_plain_steps_losses_and_gradients():
    """Every switch that changes arithmetic at once; Inductor compiles the whole step."""
    images, landmarks = _batch()
    trainer = _trainer(*ONE_STACK)
    plain = _losses_and_gradients(trainer, images, landmarks)
    switched = _losses_and_gradients(_trainer(*ONE_STACK, "compile_step=true", "dense_message_passing=true"),
                                     images, landmarks)
    _assert_as_accurate_as_the_plain_step(switched, plain, _truth(images, landmarks, *ONE_STACK),
                                          _summed_terms(trainer, images))


def test_compiled_ground_truth_is_the_steps_definition():
    """Same curves and heatmaps as ``boundary_targets``. Tolerance: both evaluate the squared distance
    ``|r - t (b - a)|^2`` in float32 (``|r| <= side = 8`` px at sigma 1), Inductor possibly with fused
    multiply-adds, so the two differ by at most ``16 u (2 side^2)`` px^2, and a heatmap value
    ``exp(-d^2 / 2)`` by half that; a pixel whose squared distance lies that close to the cut at
    ``9 sigma^2`` may fall on either side of it (a jump of at most ``exp(-4.5)``)."""
    _, landmarks = _batch()
    scheme = _trainer().model.boundary_scheme
    plain = boundary_targets(landmarks, scheme, SIZE, SIZE // 4, 1.0)
    compiled = boundary_targets_compiled(landmarks, scheme, SIZE, SIZE // 4, 1.0)
    torch.testing.assert_close(compiled.curves, plain.curves, rtol=0, atol=0)
    squared_tolerance = 16 * UNIT_ROUNDOFF * 2 * 8**2
    near_cut = (squared_distance_ref(plain.curves, SIZE // 4, SIZE // 4, 3.0) - 9.0).abs() <= squared_tolerance
    allowed = squared_tolerance / 2 + torch.where(near_cut, torch.exp(torch.tensor(-4.5)), torch.tensor(0.0))
    assert ((compiled.heatmaps - plain.heatmaps).abs() <= allowed).all()


def test_fused_adam_takes_the_plain_adam_step():
    """One step from the same gradients; Adam's update ``lr m / (sqrt(v) + eps)`` is a few operations
    per element, each rounded once in either order: the parameters agree to 8 u of their magnitude
    plus 8 u of the step ``lr``."""
    images, landmarks = _batch()
    plain, fused = _trainer(), _trainer("fused_adam=true")
    for trainer in (plain, fused):
        train_step(trainer, images, landmarks)
    lr = plain.config.lr
    for (name, mine), theirs in zip(fused.model.named_parameters(), plain.model.parameters()):
        allowed = 8 * UNIT_ROUNDOFF * (theirs.abs() + lr)
        assert ((mine - theirs).abs() <= allowed).all(), name


def test_threads_sets_torchs_intra_op_threads():
    before = torch.get_num_threads()
    try:
        _trainer("threads=2")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cores, threads, load, warned", [(2, 2, 1.2, True), (2, 1, 1.2, False), (2, 2, 0.4, False),
                                                          (16, 2, 1.2, False), (16, 16, 1.2, True)])
def test_a_cpu_run_warns_once_where_its_threads_and_the_load_outnumber_the_cores(monkeypatch, caplog, cores, threads,
                                                                                 load, warned):
    monkeypatch.setattr("os.getloadavg", lambda: (load, load, load))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    before = torch.get_num_threads()
    try:
        with caplog.at_level("WARNING", logger="labfast.train.speed"):
            _trainer(f"threads={threads}")
    finally:
        torch.set_num_threads(before)
    busy = [record for record in caplog.records if "the CPU is busy" in record.getMessage()]
    assert len(busy) == int(warned)
    if warned:
        assert f"load average {load:.1f}" in busy[0].getMessage() and "--set threads=1" in busy[0].getMessage()


def test_a_run_on_a_gpu_never_warns_of_its_cpu_threads(monkeypatch, caplog):
    from labfast.train import speed

    monkeypatch.setattr("os.getloadavg", lambda: (8.0, 8.0, 8.0))
    config, before = tiny_config("threads=2"), torch.get_num_threads()
    try:
        with caplog.at_level("WARNING", logger="labfast.train.speed"):
            speed.apply(build_model(config), config, Runtime(device=torch.device("cuda")), lambda: None)
    finally:
        torch.set_num_threads(before)
    assert not [record for record in caplog.records if "the CPU is busy" in record.getMessage()]


def test_compile_step_refuses_a_multi_process_run_before_anything_is_built():
    config = tiny_config("compile_step=true")
    with pytest.raises(ValueError, match="compile_step"):
        build_trainer(build_model(config), config, Runtime(world_size=2))


def test_inductor_threads_reach_the_compiled_steps_options(monkeypatch):
    compiled_with = {}

    def record(function, **arguments):
        compiled_with.update(arguments)
        return function

    monkeypatch.setattr(torch, "compile", record)
    _trainer("compile_step=true", "inductor_threads=1")
    assert compiled_with["options"] == {"cpp.threads": 1}
