"""Checkpoints: plain tensors and primitives only, written atomically, read with ``weights_only``.

A checkpoint is a dict::

    {"format": "labfast-checkpoint", "version": 1,
     "scheme": "300w", "boundary_scheme": "300w", "config": {...LABConfig fields...},
     "model": state_dict, "dtype": "float32" | "float16",
     ... optional training state (optimizer, scheduler, epoch, step, rng, metrics) ...}

``torch.load(weights_only=True)`` refuses anything but tensors and primitive containers, so no
pickled code runs when a checkpoint is opened. Writes go to a temporary file in the same folder,
then ``os.replace``: a crash mid-write never leaves a truncated checkpoint under the real name.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from labfast.atomic import replaced_atomically

FORMAT = "labfast-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, foreign or from an incompatible version."""


def save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format header) to ``path`` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    with replaced_atomically(path) as temporary:
        torch.save(payload, temporary)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # torch.save writes a zip archive; say so plainly for anything else (a text file would otherwise
    # surface as the unpickler's "unsupported operand 101").
    with open(path, "rb") as stream:
        head = stream.read(4)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): truncated, e.g. by an interrupted copy")
    if not zipfile.is_zipfile(path):
        if head == b"PK\x03\x04":
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt (an incomplete zip archive)")
        raise CheckpointError(f"{path} is not a torch checkpoint (torch.save writes a zip archive; this file is not one)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({error.__class__.__name__}: {error}); "
            "it is truncated, corrupt, or not a torch file"
        ) from error
    except Exception as error:  # pickle.UnpicklingError: a file that holds code or foreign objects
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain data: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a labfast checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this labfast reads {VERSION}")
    return payload


def model_payload(model: torch.nn.Module, half: bool = False) -> dict[str, Any]:
    """The parts of a checkpoint that rebuild ``model`` (a ``labfast.model.LAB``)."""
    state = model.state_dict()
    if half:
        state = {name: value.half() if value.is_floating_point() else value for name, value in state.items()}
    return {
        "scheme": model.scheme.name,
        "boundary_scheme": model.boundary_scheme.name,
        "config": model.config.to_dict(),
        "model": state,
        "dtype": "float16" if half else "float32",
    }


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a LAB model from a checkpoint, in float32 and eval mode, on ``device``.

    Returns ``(model, info)`` where ``info`` holds ``scheme``, ``boundary_scheme``, ``config`` and
    whatever else the checkpoint recorded (``metrics``, ``epoch``) except the weights.
    """
    from labfast import schemes
    from labfast.model import LAB, LABConfig

    payload = load(path)
    try:
        config = LABConfig.from_dict(payload["config"])
        scheme, boundary_scheme = schemes.get(payload["scheme"]), schemes.get(payload["boundary_scheme"])
        _check_shapes(path, payload["model"], scheme, config, boundary_scheme)
        model = LAB(scheme, config, boundary_scheme=boundary_scheme)
        state = {name: value.float() if value.is_floating_point() else value for name, value in payload["model"].items()}
        model.load_state_dict(state)
    except CheckpointError:
        raise
    except Exception as error:  # anything the file's contents make the model code raise
        raise CheckpointError(f"checkpoint {path} does not match this labfast's LAB model: {error}") from error
    info = {key: value for key, value in payload.items() if key not in ("model", "optimizer", "discriminator_optimizer", "rng")}
    info["config"] = config
    return model.to(device).eval(), info


def _check_shapes(path, state: dict, scheme, config, boundary_scheme) -> None:
    """The weights' names and shapes against those of the model ``config`` describes, built on the
    meta device (shapes only, no memory): a config whose model does not fit the weights is refused
    before anything is allocated, however large the sizes it names."""
    from labfast.model import LAB

    with torch.device("meta"):
        expected = {name: tuple(value.shape) for name, value in LAB(scheme, config, boundary_scheme=boundary_scheme).state_dict().items()}
    found = {name: tuple(value.shape) for name, value in state.items()}
    if found != expected:
        wrong = sorted(name for name in expected.keys() & found.keys() if expected[name] != found[name])
        raise CheckpointError(
            f"checkpoint {path} does not match this labfast's LAB model: {len(expected.keys() - found.keys())} weight(s) missing, "
            f"{len(found.keys() - expected.keys())} unexpected, {len(wrong)} of another shape"
            + (f" (first: {wrong[0]} is {found[wrong[0]]}, the config needs {expected[wrong[0]]})" if wrong else ""))
