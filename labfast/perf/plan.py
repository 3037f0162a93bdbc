"""What one ``labfast bench`` run measures: its settings, read from the command line, and the
``--plan`` (``SECTION@BATCH[=BACKEND,...];...``: rows in the order they run, most wanted first)."""
from __future__ import annotations

import dataclasses

import torch

from labfast.perf.backends import BACKEND_GROUPS, row_backends
from labfast.perf.inputs import DTYPES
from labfast.perf.sections import SECTIONS


@dataclasses.dataclass(frozen=True)
class PlanItem:
    """One entry of ``--plan``: a section at one batch size, with named row backends (``None``: the
    section's backends for the ``--backend`` groups)."""

    section: str
    batch: int
    backends: tuple[str, ...] | None = None


@dataclasses.dataclass
class Settings:
    what: tuple[str, ...]
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    groups: tuple[str, ...]
    config: str
    repeats: int
    min_time: float
    plan: tuple[PlanItem, ...] | None = None  # rows in this order instead of what x batches
    budget_s: float | None = None  # rows not begun within this many seconds are recorded as skipped

    def items(self) -> tuple[PlanItem, ...]:
        """The plan, or every requested section at every batch (batch by batch)."""
        return self.plan or tuple(PlanItem(section, batch) for batch in self.batches
                                  for section in SECTIONS if section in self.what)


def _list(text: str, allowed: tuple[str, ...] | None, flag: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise SystemExit(f"labfast bench: {flag} is empty")
    if allowed is not None:
        bad = [item for item in items if item not in allowed]
        if bad:
            raise SystemExit(f"labfast bench: {flag} {','.join(bad)} is not one of {', '.join(allowed)}")
    return items


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(part) for part in _list(text, None, "--batch"))
    except ValueError:
        raise SystemExit(f"labfast bench: --batch {text!r} must be comma-separated positive integers") from None
    if any(batch < 1 for batch in batches):
        raise SystemExit(f"labfast bench: --batch {text!r} must be comma-separated positive integers")
    return batches


def parse_plan(text: str) -> tuple[PlanItem, ...]:
    """``SECTION@BATCH[=BACKEND,...];...`` -> plan items, with errors naming the bad entry."""
    items = []
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        head, _, names = entry.partition("=")
        section, at, batch = head.partition("@")
        section = section.strip()
        if section not in SECTIONS or not at:
            raise SystemExit(f"labfast bench: --plan entry {entry!r} is not SECTION@BATCH[=BACKEND,...] "
                             f"with SECTION one of {', '.join(SECTIONS)}")
        (size,) = _batches(batch)
        backends = None
        if names.strip():
            backends = tuple(part.strip() for part in names.split(","))
            known = row_backends(section, BACKEND_GROUPS)
            bad = [name for name in backends if name not in known]
            if bad:
                raise SystemExit(f"labfast bench: --plan entry {entry!r}: {', '.join(bad)} is not a {section} backend "
                                 f"(known: {', '.join(known)})")
        items.append(PlanItem(section, size, backends))
    if not items:
        raise SystemExit("labfast bench: --plan is empty")
    return tuple(items)


def shipped_preset() -> str:
    """The preset of the weights ``labfast`` ships (``FaceAligner()``'s model): what a CPU user runs."""
    from labfast import checkpoint
    from labfast.inference.aligner import default_weights

    try:
        return checkpoint.load(default_weights())["config"]["name"]
    except FileNotFoundError as error:
        raise SystemExit(f"labfast bench: {error}; name a preset with --config") from None


def settings_from_args(args, device: torch.device) -> Settings:
    """The settings of ``labfast bench``'s arguments; defaults depend on the device (a GPU: the
    paper's model in fp32 and bf16 at batches 1, 32, 256; a CPU: the shipped model, fp32, 1 and 2)."""
    gpu = device.type == "cuda"
    what = _list(args.what, (*SECTIONS, "all"), "--what")
    if args.repeats < 1:
        raise SystemExit(f"labfast bench: --repeats {args.repeats} must be at least 1")
    if args.budget is not None and not args.budget > 0:
        raise SystemExit(f"labfast bench: --budget {args.budget} must be a positive number of seconds")
    return Settings(
        what=SECTIONS if "all" in what else what,
        batches=_batches(args.batch or ("1,32,256" if gpu else "1,2")),
        dtypes=_list(args.dtype or ("fp32,bf16" if gpu else "fp32"), tuple(DTYPES), "--dtype"),
        groups=_list(args.backend or ("reference,compile,fast" if gpu else "reference,fast"), BACKEND_GROUPS, "--backend"),
        config=args.config or ("paper" if gpu else shipped_preset()),
        repeats=args.repeats,
        min_time=args.min_time if args.min_time is not None else (1.0 if gpu else 0.2),
        plan=parse_plan(args.plan) if args.plan is not None else None,
        budget_s=args.budget,
    )
