"""Model bundles: weights plus a JSON model card that says how to use them.

A bundle is a folder holding ``model.json`` (the :class:`ModelCard`) and ``model.safetensors``
(or ``model.pt``, a plain state dict). Loading never unpickles objects: safetensors, or
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import MedsegError
from .models import create_model

CARD_NAME = "model.json"
WEIGHT_NAMES = ("model.safetensors", "model.pt")
FORMAT_VERSION = 1


@dataclass
class ModelCard:
    """Everything needed to use a set of weights.

    ``labels`` maps label name -> value written in masks (``background`` is 0). The network's
    output class ``c`` is the ``c``-th smallest label value. Slices are taken along the third
    axis after reorienting the scan to ``orientation`` (RAS: axial slices), resampled in-plane
    to ``spacing`` mm. ``context_slices`` neighbours on each side are extra input channels.
    """

    name: str
    labels: dict[str, int]
    modality: str
    architecture: str = "segnet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    spacing: list[float] = field(default_factory=lambda: [2.0, 2.0])
    slice_size: list[int] | None = None
    context_slices: int = 0
    orientation: str = "RAS"
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    medseg_version: str = __version__
    format_version: int = FORMAT_VERSION

    @property
    def label_values(self) -> list[int]:
        """Label value of each output class, in class order."""
        return sorted(self.labels.values())

    @property
    def class_names(self) -> list[str]:
        by_value = {v: k for k, v in self.labels.items()}
        return [by_value[v] for v in self.label_values]

    @property
    def in_channels(self) -> int:
        return 2 * self.context_slices + 1

    def validate(self, where: str | Path = "model card") -> None:
        problems = []
        if len(self.labels) < 2:
            problems.append("needs at least two labels (background and one structure)")
        if len(set(self.labels.values())) != len(self.labels):
            problems.append("two labels share a value")
        if 0 not in self.labels.values():
            problems.append("no label has value 0 (background)")
        if self.modality.upper() not in ("CT", "MR"):
            problems.append(f"modality {self.modality!r} is not CT or MR")
        if self.arch_kwargs.get("in_channels", self.in_channels) != self.in_channels:
            problems.append(f"in_channels {self.arch_kwargs.get('in_channels')} != 2*context_slices+1")
        if self.arch_kwargs.get("num_classes", len(self.labels)) != len(self.labels):
            problems.append(f"num_classes {self.arch_kwargs.get('num_classes')} != number of labels {len(self.labels)}")
        if len(self.spacing) != 2 or min(self.spacing) <= 0:
            problems.append(f"spacing {self.spacing} is not two positive in-plane sizes")
        if self.orientation.upper() != "RAS":
            problems.append(f"orientation {self.orientation!r} is not supported (only RAS)")
        if problems:
            raise MedsegError(f"{where}: invalid model card: {'; '.join(problems)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path = "model card") -> "ModelCard":
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("name", "labels", "modality") if k not in data]
        if missing:
            raise MedsegError(f"{where}: model card lacks {', '.join(missing)}")
        if int(data.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise MedsegError(f"{where}: model card format {data['format_version']} is newer than this medseg understands")
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.labels = {str(k): int(v) for k, v in card.labels.items()}
        card.validate(where)
        return card


@dataclass
class Bundle:
    """A ready-to-run model: its card and the network (in eval mode)."""

    card: ModelCard
    model: nn.Module
    path: Path | None = None


def build_model(card: ModelCard) -> nn.Module:
    kwargs = {"in_channels": card.in_channels, "num_classes": len(card.labels), **card.arch_kwargs}
    try:
        return create_model(card.architecture, **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise MedsegError(f"model card: cannot build {card.architecture!r}: {exc}") from None


def _bundle_files(path: Path) -> tuple[Path, Path]:
    folder = path if path.is_dir() else path.parent
    card = folder / CARD_NAME
    if not path.exists():
        raise MedsegError(f"{path}: no such model bundle")
    if not card.is_file():
        raise MedsegError(f"{path}: not a model bundle (no {CARD_NAME})")
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return card, folder / name
    raise MedsegError(f"{path}: model bundle has no weights ({' or '.join(WEIGHT_NAMES)})")


def load_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """Read weights without unpickling anything."""
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(weights), device="cpu")
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MedsegError(f"{weights}: cannot read weights ({str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedsegError(f"{weights}: not a state dict of tensors")
    return state


def load_bundle(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle folder (default: the bundled model) onto ``device``, in eval mode."""
    path = Path(path) if path is not None else default_bundle_path()
    card_path, weights = _bundle_files(path)
    try:
        data = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedsegError(f"{card_path}: unreadable model card ({exc})") from None
    if not isinstance(data, dict):
        raise MedsegError(f"{card_path}: model card is not a JSON object")
    card = ModelCard.from_dict(data, card_path)
    model = build_model(card)
    state = load_state_dict(weights)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise MedsegError(f"{weights}: weights do not fit the {card.architecture} in the card ({first[:200]})") from None
    model.to(device).eval()
    return Bundle(card=card, model=model, path=card_path.parent)


def save_bundle(model: nn.Module, card: ModelCard, folder: str | os.PathLike, *, half: bool = False) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``folder`` atomically.

    The files are written to a temporary sibling folder which then replaces ``folder``, so a
    reader never sees a half-written bundle. ``half`` stores floating weights as float16.
    """
    from safetensors.torch import save_file

    card.validate()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        state = {
            k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(state, str(tmp / WEIGHT_NAMES[0]), metadata={"format": "pt", "medseg_card": CARD_NAME})
        (tmp / CARD_NAME).write_text(card.to_json())
        # mkdtemp and safetensors make private files; a bundle is meant to be shared
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def default_bundle_path() -> Path:
    """The bundled default model: ``$MEDSEG_MODEL`` if set, else ``sample_data/model`` of this checkout."""
    env = os.environ.get("MEDSEG_MODEL")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "sample_data" / "model"
