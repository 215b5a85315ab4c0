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
from .resources import default_bundle_path, model_path  # noqa: F401  (default_bundle_path: its home was here)

CARD_NAME = "model.json"
WEIGHT_NAMES = ("model.safetensors", "model.pt")
FORMAT_VERSION = 2  # 2: context_mm. A card without it is written as 1, which older medseg reads the same way


@dataclass
class ModelCard:
    """Everything needed to use a set of weights.

    ``labels`` maps label name -> value written in masks (``background`` is 0). The network's
    output class ``c`` is the ``c``-th smallest label value. Slices are taken along the third
    axis after reorienting the scan to ``orientation`` (RAS: axial slices), resampled in-plane
    to ``spacing`` mm. ``context_slices`` neighbours on each side are extra input channels,
    taken ``context_mm`` apart (the nearest slice, at least the next one; None: the next slice,
    whatever the slice spacing), so that 0.5 mm and 5 mm slices give the network comparable context.
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
    context_mm: float | None = None
    orientation: str = "RAS"
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    # What inference does to the label map after the network (empty: nothing): "main_piece" (label
    # names) keeps, of each of those labels, the pieces within "margin_mm" of its largest piece
    # (medseg.postprocess: a label's voxels on another organ, far from it, become background)
    postprocessing: dict[str, Any] = field(default_factory=dict)
    # 1st and 99th percentile of the training images' voxel values (HU for CT; values below
    # -1024 HU, padding outside the field of view, left out): scans far outside are warned about
    intensity_range: list[float] | None = None
    # What the model was trained on (optional; empty for older cards), checked by medseg.domain:
    # "source", "dataset", "modality", "body_region", "phase" (text), "cases" and
    # "validation_cases" (counts), "field_of_view_mm" and "spacing_mm" ({"min": [x, y, z],
    # "max": [x, y, z]} over the training images, along the R-L, A-P and I-S axes).
    training_data: dict[str, Any] = field(default_factory=dict)
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

    def context_step(self, slice_mm: float) -> int:
        """Slices between context neighbours in a scan whose slices are ``slice_mm`` apart."""
        from .slices import context_step

        return context_step(self.context_mm, slice_mm)

    def validate(self, where: str | Path = "model card") -> None:
        """Check that the card is consistent; a one-line error naming ``where`` and the field."""
        problems = _card_problems(self)
        if problems:
            raise MedsegError(f"{where}: invalid model card: {'; '.join(problems)}")

    def __post_init__(self) -> None:
        # The version the card's content needs (a newer one is refused before it gets here): a medseg
        # that predates context_mm would take the next slice as context, so it must refuse such a card;
        # any other card is read the same way by every version.
        self.format_version = FORMAT_VERSION if self.context_mm is not None else 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path = "model card") -> "ModelCard":
        """A card from JSON data: every field type-checked (pydantic), then :meth:`validate`."""
        from .schema import validate_as

        if not isinstance(data, dict):
            raise MedsegError(f"{where}: model card is not a JSON object")
        version = data.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise MedsegError(f"{where}: model card format {version} is newer than this medseg understands")
        card = validate_as(cls, data, where)
        card.validate(where)
        return card


def _card_problems(card: ModelCard) -> list[str]:
    """Every inconsistency of a card, each naming its field."""
    from .schema import finite_number

    problems = []
    if not str(card.name).strip():
        problems.append("field 'name' is empty")
    if len(card.labels) < 2:
        problems.append("field 'labels' needs at least two labels (background and one structure)")
    for name, value in card.labels.items():
        if not str(name).strip():
            problems.append("field 'labels' has an empty label name")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 65535:
            problems.append(f"field 'labels.{name}': {value!r} is not a label value 0..65535")
    values = list(card.labels.values())
    dups = sorted({v for v in values if values.count(v) > 1})
    if dups:
        names = [k for k, v in card.labels.items() if v in dups]
        problems.append(f"field 'labels': {', '.join(names)} share the value {dups[0]}")
    if card.labels and 0 not in values:
        problems.append("field 'labels': no label has value 0 (background)")
    if str(card.modality).upper() not in ("CT", "MR"):
        problems.append(f"field 'modality': {card.modality!r} is not CT or MR")
    if card.context_slices < 0 or card.context_slices > 16:
        problems.append(f"field 'context_slices': {card.context_slices} is not 0..16")
    if card.context_mm is not None and not (finite_number(card.context_mm) and 0 < card.context_mm <= 50):
        problems.append(f"field 'context_mm': {card.context_mm!r} is not a distance in (0, 50] mm")
    if card.arch_kwargs.get("in_channels", card.in_channels) != card.in_channels:
        problems.append(f"field 'arch_kwargs.in_channels': {card.arch_kwargs.get('in_channels')} != 2*context_slices+1")
    if card.arch_kwargs.get("num_classes", len(card.labels)) != len(card.labels):
        problems.append(
            f"field 'arch_kwargs.num_classes': {card.arch_kwargs.get('num_classes')} != number of labels {len(card.labels)}"
        )
    width = card.arch_kwargs.get("width")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        problems.append(f"field 'arch_kwargs.width': {width!r} is not a positive integer")
    if len(card.spacing) != 2 or not all(finite_number(s) and s > 0 for s in card.spacing):
        problems.append(f"field 'spacing': {card.spacing} is not two positive in-plane sizes (mm)")
    if card.slice_size is not None and (len(card.slice_size) != 2 or min(card.slice_size) < 1):
        problems.append(f"field 'slice_size': {card.slice_size} is not two positive sizes")
    if str(card.orientation).upper() != "RAS":
        problems.append(f"field 'orientation': {card.orientation!r} is not supported (only RAS)")
    problems += _preprocessing_problems(card.preprocessing, card.modality)
    if card.intensity_range is not None:
        r = card.intensity_range
        if len(r) != 2 or not all(finite_number(v) for v in r) or not r[0] < r[1]:
            problems.append(f"field 'intensity_range': {r} is not an increasing pair of finite values")
    problems += _training_data_problems(card.training_data, card.modality)
    problems += _postprocessing_problems(card.postprocessing, card.labels)
    return problems


def _postprocessing_problems(post: dict[str, Any], labels: dict[str, int]) -> list[str]:
    """What is wrong with a card's ``postprocessing`` (unknown keys are refused: inference must
    not silently skip a step the model's figures were measured with)."""
    from .schema import finite_number

    if not isinstance(post, dict):
        return [f"field 'postprocessing': {post!r} is not an object"]
    problems = [f"field 'postprocessing.{key}': unknown step (this medseg knows main_piece, margin_mm)"
                for key in post if key not in ("main_piece", "margin_mm")]
    names = post.get("main_piece", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n in labels and labels[n] != 0 for n in names):
        problems.append(f"field 'postprocessing.main_piece': {names!r} is not a list of the card's label names")
    margin = post.get("margin_mm", 0.0)
    if not (finite_number(margin) and margin >= 0):
        problems.append(f"field 'postprocessing.margin_mm': {margin!r} is not a distance >= 0 mm")
    return problems


TRAINING_DATA_TEXT = ("source", "dataset", "modality", "body_region", "phase")
TRAINING_DATA_COUNTS = ("cases", "validation_cases")
TRAINING_DATA_RANGES = ("field_of_view_mm", "spacing_mm")


def _training_data_problems(data: dict[str, Any], modality: str) -> list[str]:
    """What is wrong with a card's ``training_data`` (unknown keys are left alone)."""
    problems = []
    for key in TRAINING_DATA_TEXT:
        if key in data and not (isinstance(data[key], str) and data[key].strip()):
            problems.append(f"field 'training_data.{key}': {data[key]!r} is not a non-empty text")
    if isinstance(data.get("modality"), str) and data["modality"].upper() != str(modality).upper():
        problems.append(f"field 'training_data.modality': {data['modality']!r} differs from the card's modality {modality!r}")
    for key in TRAINING_DATA_COUNTS:
        value, least = data.get(key, 1), 1 if key == "cases" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.append(f"field 'training_data.{key}': {value!r} is not an integer >= {least}")
    for key in TRAINING_DATA_RANGES:
        if key in data:
            problem = _range_problem(data[key])
            if problem:
                problems.append(f"field 'training_data.{key}': {problem}")
    return problems


def _range_problem(value: Any) -> str | None:
    """Why ``value`` is not ``{"min": [x, y, z], "max": [x, y, z]}`` of positive mm with min <= max."""
    from .schema import finite_number, short_repr

    if not isinstance(value, dict) or not {"min", "max"} <= set(value):
        return f"{short_repr(value)} is not an object with 'min' and 'max'"
    for end in ("min", "max"):
        v = value[end]
        if not isinstance(v, list) or len(v) != 3 or not all(finite_number(x) and x > 0 for x in v):
            return f"'{end}' {short_repr(v)} is not three positive sizes in mm"
    if not all(lo <= hi for lo, hi in zip(value["min"], value["max"])):
        return f"'min' {value['min']} exceeds 'max' {value['max']}"
    return None


def _preprocessing_problems(pre: dict[str, Any], modality: str) -> list[str]:
    from .schema import finite_number

    kind = pre.get("kind")
    if kind == "ct_window":
        window = pre.get("window")
        if not isinstance(window, (list, tuple)) or len(window) != 2 or not all(finite_number(v) for v in window):
            return [f"field 'preprocessing.window': {window!r} is not two finite HU values [low, high]"]
        if not window[0] < window[1]:
            return [f"field 'preprocessing.window': {list(window)} is inverted or empty (low must be below high)"]
        if str(modality).upper() != "CT":
            return [f"field 'preprocessing.kind': a CT window for a {modality} model"]
        return []
    if kind == "mr_percentiles":
        pct = pre.get("percentiles", [0.5, 99.5])
        if (
            not isinstance(pct, (list, tuple))
            or len(pct) != 2
            or not all(finite_number(v) for v in pct)
            or not 0 <= pct[0] < pct[1] <= 100
        ):
            return [f"field 'preprocessing.percentiles': {pct!r} is not two percentiles 0 <= low < high <= 100"]
        return []
    return [f"field 'preprocessing.kind': {kind!r} is not one of ct_window, mr_percentiles"]


@dataclass
class Bundle:
    """A ready-to-run model: its card and the network (in eval mode)."""

    card: ModelCard
    model: nn.Module
    path: Path | None = None


def build_model(card: ModelCard, where: str | Path = "model card") -> nn.Module:
    kwargs = {"in_channels": card.in_channels, "num_classes": len(card.labels), **card.arch_kwargs}
    try:
        return create_model(card.architecture, **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedsegError(f"{where}: field 'architecture'/'arch_kwargs': cannot build {card.architecture!r} ({reason})") from None


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


def check_finite_weights(state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse weights holding NaN or infinity (a diverged or damaged model), naming the tensor."""
    bad = []
    for key, value in state.items():
        if value.is_floating_point():
            n = int((~torch.isfinite(value)).sum())
            if n:
                bad.append((key, n, value.numel()))
    if bad:
        key, n, total = bad[0]
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise MedsegError(f"{where}: tensor '{key}' holds {n} of {total} non-finite values (NaN/inf){more}; the model is damaged")


def load_card(path: str | os.PathLike | None = None) -> ModelCard:
    """Only the model card of a bundle folder (default: the bundled model), checked; no weights read."""
    from .schema import read_json_object

    card_path, _ = _bundle_files(Path(path) if path is not None else default_bundle_path())
    return ModelCard.from_dict(read_json_object(card_path, "model card"), card_path)


def load_bundle(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle folder (default: the bundled model) onto ``device``, in eval mode."""
    path = Path(path) if path is not None else default_bundle_path()
    card_path, weights = _bundle_files(path)
    card = load_card(path)
    state = load_state_dict(weights)
    check_finite_weights(state, weights)
    model = model_with_weights(card, state, weights, card_path)
    model.to(device).eval()
    return Bundle(card=card, model=model, path=card_path.parent)


def model_with_weights(card: ModelCard, state: dict[str, torch.Tensor], weights: str | Path,
                       card_path: str | Path = "model card") -> nn.Module:
    """The card's network holding ``state`` (floating tensors as float32); a one-line error naming
    ``weights`` when they do not fit it."""
    model = build_model(card, card_path)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise MedsegError(f"{weights}: weights do not fit the {card.architecture} in the card ({first[:200]})") from None
    return model


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
