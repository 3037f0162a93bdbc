"""``LAB``: boundary heatmap estimator + boundary-aware regressor (+ the training-time
discriminator), Wu et al., CVPR 2018, Fig. 2."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from labfast import schemes
from labfast.data.transforms import rescale_pixel_coordinates
from labfast.model.config import LABConfig, config_by_name
from labfast.model.discriminator import BoundaryDiscriminator
from labfast.model.estimator import BoundaryHeatmapEstimator
from labfast.model.regressor import BoundaryAwareRegressor
from labfast.schemes import Scheme

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Parameters and FLOPs that later comparison tables quote for LAB (e.g. SLPT, STAR).
QUOTED_PARAMETERS = 12.3e6
QUOTED_GFLOPS = 18.9


@dataclass
class LABOutput:
    """``landmarks``: ``(N, L, 2)`` in input pixel coordinates (x, y; pixel centres at integers).
    ``heatmaps``: one ``(N, K, S/4, S/4)`` tensor per stack, the last one the final estimate."""

    landmarks: torch.Tensor
    heatmaps: list[torch.Tensor]


# a pytree node, so torch.export (and AOT autograd) can return it from the traced model
torch.export.register_dataclass(LABOutput)


class ModelSummary(dict):
    """``LAB.summary()``'s figures as a dict; ``str()`` of it is a printable table."""

    def __str__(self) -> str:
        p = self["parameters"]
        lines = [
            f"LAB {self['config']} for scheme {self['scheme']} (boundaries of {self['boundary_scheme']},"
            f" K={self['num_boundaries']}), input {self['input_size']}x{self['input_size']}",
            f"  parameters  estimator {p['estimator'] / 1e6:8.3f} M   regressor {p['regressor'] / 1e6:8.3f} M"
            f"   inference total {p['inference'] / 1e6:8.3f} M   discriminator {p['discriminator'] / 1e6:.3f} M"
            " (training only)",
            f"  compute     {self['gflops']:.2f} GFLOPs = {self['gmacs']:.2f} GMACs per face"
            f" (estimator {self['gflops_estimator']:.2f}, regressor {self['gflops_regressor']:.2f} GFLOPs)",
            f"  quoted for LAB by later tables: {QUOTED_PARAMETERS / 1e6:.1f} M parameters, "
            f"{QUOTED_GFLOPS} \"GFLOPs\" (such tables usually count multiply-accumulates)",
        ]
        return "\n".join(lines)


class LAB(nn.Module):
    """Look at Boundary.

    Args:
        scheme: landmark scheme of the regressed points (name or ``Scheme``).
        config: ``LABConfig`` or a preset name (``"paper"``, ``"small"``, ``"tiny"``).
        boundary_scheme: scheme whose boundaries the estimator predicts (cross-data-set training,
            e.g. 300-W boundaries for COFW landmarks); defaults to ``scheme``.

    ``model(images)`` with ``images`` ``(N, 3, S, S)`` RGB (``S = config.input_size``), uint8 in
    ``0..255`` or floating point in ``[0, 1]``, returns ``LABOutput``. Normalisation (uint8 to
    ``[0, 1]``, then ImageNet mean/std or per image) happens inside, on the model's device; both the
    estimator and the regressor (and so the ``I`` of input fusion) see the normalised image. The
    regressor reads the last stack's heatmaps as they are (no clamp, gradient flowing back into
    the estimator); a training loop that wants them fixed detaches them itself.
    """

    def __init__(self, scheme: str | Scheme, config: LABConfig | str = "paper",
                 boundary_scheme: str | Scheme | None = None) -> None:
        super().__init__()
        self.scheme = schemes.get(scheme)
        self.boundary_scheme = self.scheme if boundary_scheme is None else schemes.get(boundary_scheme)
        self.config = config_by_name(config) if isinstance(config, str) else config
        k = self.boundary_scheme.num_boundaries
        self.estimator = BoundaryHeatmapEstimator(self.boundary_scheme, self.config)
        self.regressor = BoundaryAwareRegressor(self.scheme.num_points, k, self.config)
        self.discriminator = (
            BoundaryDiscriminator(k, self.config.discriminator_channels, self.config.heatmap_size)
            if self.config.discriminator else None
        )
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` uint8 or in ``[0, 1]`` -> zero-mean, unit-variance input of both networks.

        uint8 is divided by 255 here, in float32: the same values as a crop converted on the host,
        which then travels to the device in four times the bytes.
        """
        if images.dtype == torch.uint8:
            images = images.float() / 255
        if self.config.normalization == "per_image":
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
            return (images - mean) / std
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> LABOutput:
        size = self.config.input_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
            raise ValueError(
                f"LAB expects images of shape (N, 3, {size}, {size}) (config.input_size={size}), "
                f"got {tuple(images.shape)}"
            )
        x = self.normalize(images)
        heatmaps = self.estimator(x)
        normalised = self.regressor(x, heatmaps[-1])
        # crop-normalised (0 at the centre, ±0.5 at the crop edges) -> pixel centres 0 … S-1
        landmarks = rescale_pixel_coordinates(normalised.float(), size)
        return LABOutput(landmarks=landmarks, heatmaps=heatmaps)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; ``inference`` = estimator + regressor (what the quoted 12.3 M counts)."""
        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters())

        estimator, regressor = count(self.estimator), count(self.regressor)
        return {
            "estimator": estimator,
            "regressor": regressor,
            "discriminator": count(self.discriminator),
            "inference": estimator + regressor,
        }

    def flop_counts(self) -> dict[str, int]:
        """FLOPs of one forward pass of one face, counted by ``torch.utils.flop_counter``.

        FlopCounterMode counts convolutions and matrix products as 2 FLOPs per multiply-accumulate
        and ignores element-wise work (BN, ReLU, fusion products, up-sampling); it runs on the meta
        device, so nothing is computed.
        """
        size = self.config.input_size
        with torch.device("meta"):
            image = torch.zeros(1, 3, size, size)
            meta = LAB(self.scheme, self.config, self.boundary_scheme).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(image)
        by_module = counter.get_flop_counts()

        def total(name: str) -> int:
            return int(sum(by_module.get(name, {}).values()))

        return {
            "total": int(counter.get_total_flops()),
            "estimator": total("LAB.estimator"),
            "regressor": total("LAB.regressor"),
        }

    def summary(self) -> ModelSummary:
        """Parameters per part and FLOPs / MACs at ``config.input_size``; print it for a table."""
        flops = self.flop_counts()
        return ModelSummary(
            config=self.config.name,
            scheme=self.scheme.name,
            boundary_scheme=self.boundary_scheme.name,
            num_boundaries=self.boundary_scheme.num_boundaries,
            input_size=self.config.input_size,
            parameters=self.parameter_counts(),
            gflops=flops["total"] / 1e9,
            gmacs=flops["total"] / 2e9,
            gflops_estimator=flops["estimator"] / 1e9,
            gflops_regressor=flops["regressor"] / 1e9,
        )
