"""Weight averaging of model bundles ("model soup", Wortsman et al., ICML 2022).

Two or more bundles of one lineage (one fine-tuned from the other, or both from one source)
often lie in one basin of the loss: the mean of their weights is then a model that is at least
as good as each on what they were trained on, and often better on what neither saw, at the cost
of one model at inference. The default model is such an average (``make model``).

:func:`average_bundles` checks that the bundles can be averaged (same architecture, width,
labels, preprocessing, spacing, 2.5D context and post-processing; same tensors), writes the
weighted mean of every floating tensor (batch-norm running statistics included; integer
counters are taken from the first bundle) as a new bundle, and records in its card what was
averaged with which weights. The card's training domain (``training_data``) is the union of
the sources' (ranges widened, phases and styles joined), so the domain check knows all of it.
Bundles of unrelated trainings give a useless average: nothing here can tell, so evaluate it.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from .bundle import (
    ModelCard,
    _bundle_files,
    check_finite_weights,
    load_card,
    load_state_dict,
    model_with_weights,
    save_bundle,
)
from .errors import MedsegError

# Card fields that must be equal for the weights to mean the same thing
_SAME = ("architecture", "arch_kwargs", "labels", "modality", "preprocessing", "spacing",
         "context_slices", "context_mm", "orientation", "postprocessing")


def _check_compatible(cards: Sequence[ModelCard], paths: Sequence[Path]) -> None:
    first = cards[0]
    for card, path in zip(cards[1:], paths[1:]):
        for name in _SAME:
            a, b = getattr(first, name), getattr(card, name)
            if a != b:
                raise MedsegError(f"{path}: field '{name}' is {b!r}, {paths[0]} has {a!r}; "
                                  f"only bundles of one architecture and set-up can be averaged")


def _mean_state(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float],
                paths: Sequence[Path]) -> dict[str, torch.Tensor]:
    first = states[0]
    for state, path in zip(states[1:], paths[1:]):
        if state.keys() != first.keys():
            missing = sorted(set(first) ^ set(state))[0]
            raise MedsegError(f"{path}: tensor '{missing}' is in one bundle only; the networks differ")
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise MedsegError(f"{path}: tensor '{key}' has shape {tuple(value.shape)}, "
                                  f"{paths[0]} has {tuple(first[key].shape)}")
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            out[key] = sum(w * s[key].double() for w, s in zip(weights, states)).float()
        else:  # e.g. batch norm's num_batches_tracked: a counter, not a parameter
            out[key] = value.clone()
    return out


def _norm_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise MedsegError(f"weights: {len(weights)} given for {n} model bundles; give one per bundle")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise MedsegError(f"weights: {weights} must be finite, >= 0 and not all 0")
    total = sum(weights)
    return [w / total for w in weights]


def _merge(values: list[Any], key: str = "") -> Any:
    """One training-domain value covering all of ``values`` (the sources' values for one field)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: _merge([v.get(k) for v in present], k) for k in keys}
    if all(isinstance(v, bool) for v in present) or not all(type(v) is type(present[0]) for v in present):
        return present[0]
    if isinstance(present[0], (int, float)):  # counts: at least the largest source's
        return max(present)
    if isinstance(present[0], list) and all(isinstance(x, (int, float)) for v in present for x in v):
        if len({len(v) for v in present}) != 1:
            return present[0]
        if key in ("min", "max"):  # an extent's corner, axis by axis
            pick = min if key == "min" else max
            return [pick(xs) for xs in zip(*present)]
        if len(present[0]) == 2:  # a [low, high] range
            return [min(v[0] for v in present), max(v[1] for v in present)]
        return present[0]
    if isinstance(present[0], list):
        return sorted(dict.fromkeys(x for v in present for x in v), key=str)
    if isinstance(present[0], str) and key == "phase":
        return ", ".join(dict.fromkeys(p.strip() for v in present for p in v.split(",") if p.strip()))
    if isinstance(present[0], str):  # e.g. dataset names: "a + b" (an average's) and "b" give "a + b"
        return " + ".join(dict.fromkeys(p.strip() for v in present for p in v.split(" + ")))
    return present[0]


def _cases(cards: Sequence[ModelCard], key: str) -> list[str]:
    """The case names in the sources' ``training[key]``, each once, in order."""
    return list(dict.fromkeys(n for c in cards for n in c.training.get(key) or []))


def _training_data(cards: Sequence[ModelCard], trained: list[str], held_out: list[str]) -> dict[str, Any]:
    data = _merge([c.training_data or None for c in cards]) or {}
    if trained and "cases" in data:  # the cases any source learnt from, each once
        data["cases"] = len(trained)
    if trained and "validation_cases" in data:  # those no source learnt from
        data["validation_cases"] = len(held_out)
    return data


def _training_record(cards: Sequence[ModelCard], paths: Sequence[Path], weights: Sequence[float],
                     trained: list[str], held_out: list[str], command: str | None) -> dict[str, Any]:
    sources = []
    for card, path, weight in zip(cards, paths, weights):
        t = card.training
        source = {"path": str(path), "weight": round(weight, 6),
                  "dataset": t.get("dataset") or card.training_data.get("dataset"),
                  "epoch": t.get("epoch"), "val_cases": t.get("val_cases"), "val_dice": t.get("val_dice"),
                  "command": t.get("command")}
        if t.get("averaged_from"):  # an average of averages keeps the whole tree
            source["averaged_from"] = t["averaged_from"]
        sources.append(source)
    record: dict[str, Any] = {"method": "weight average (model soup) of the bundles in averaged_from",
                              "averaged_from": sources, "train_cases": trained, "val_cases": held_out}
    if command:
        record["command"] = command
    return record


def average_bundles(sources: Sequence[str | os.PathLike], output: str | os.PathLike,
                    weights: Sequence[float] | None = None, *, command: str | None = None) -> Path:
    """Write the weighted mean of the bundles in ``sources`` (equal weights by default) as a new
    bundle in ``output`` (new or an empty folder, not over or around a source); return it."""
    from .safety import check_new_folder

    paths = [Path(s) for s in sources]
    if len(paths) < 2:
        raise MedsegError("average: give at least two model bundles")
    weights = _norm_weights(weights, len(paths))
    out = check_new_folder(output, [("model bundle", p) for p in paths])
    cards = [load_card(p) for p in paths]
    _check_compatible(cards, paths)
    files = [_bundle_files(p)[1] for p in paths]
    states = [load_state_dict(f) for f in files]
    for state, f in zip(states, files):
        check_finite_weights(state, f)
    model = model_with_weights(cards[0], _mean_state(states, weights, paths), files[0])
    trained = _cases(cards, "train_cases")
    # held out from every source: a source's validation case that another source trained on is not
    seen = set(trained)
    held_out = [n for n in _cases(cards, "val_cases") if n not in seen]
    ranges = [c.intensity_range for c in cards if c.intensity_range]
    card = replace(
        cards[0],
        training=_training_record(cards, paths, weights, trained, held_out, command),
        training_data=_training_data(cards, trained, held_out),
        intensity_range=[min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None,
        description=_merge([c.description or None for c in cards]) or "",
    )
    half = all(t.dtype == torch.float16 for s in states for t in s.values() if t.is_floating_point())
    return save_bundle(model, card, out, half=half)


__all__ = ["average_bundles"]
