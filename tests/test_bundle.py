"""Model bundles: weights + model card, loaded without unpickling."""

import json

import pytest
import torch

from medseg.bundle import ModelCard, build_model, load_bundle, save_bundle
from medseg.errors import MedsegError


def _card(**kw):
    base = dict(
        name="tiny",
        labels={"background": 0, "liver": 1, "tumour": 5},
        modality="CT",
        arch_kwargs={"width": 4},
        preprocessing={"kind": "ct_window", "window": [-200, 300]},
        context_slices=1,
    )
    base.update(kw)
    return ModelCard(**base)


def test_roundtrip(tmp_path):
    card = _card(training={"epochs": 3})
    torch.manual_seed(0)
    model = build_model(card).eval()
    save_bundle(model, card, tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["model.json", "model.safetensors"]
    bundle = load_bundle(tmp_path / "b")
    assert bundle.card == card
    assert bundle.card.label_values == [0, 1, 5] and bundle.card.class_names == ["background", "liver", "tumour"]
    x = torch.randn(1, 3, 40, 36)
    with torch.inference_mode():
        torch.testing.assert_close(bundle.model(x), model(x))
    # half-precision storage keeps predictions (argmax) essentially identical
    save_bundle(model, card, tmp_path / "b", half=True)
    half = load_bundle(tmp_path / "b")
    with torch.inference_mode():
        agree = (half.model(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree > 0.99
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left


def test_torch_state_dict_is_loaded_weights_only(tmp_path):
    card = _card()
    model = build_model(card)
    (tmp_path / "model.json").write_text(card.to_json())
    torch.save(model.state_dict(), tmp_path / "model.pt")
    assert load_bundle(tmp_path).card.name == "tiny"


class Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    card = _card()
    (tmp_path / "model.json").write_text(card.to_json())
    torch.save({"weights": Evil()}, tmp_path / "model.pt")
    with pytest.raises(MedsegError, match="cannot read weights"):
        load_bundle(tmp_path)
    assert "pickle code ran" not in capsys.readouterr().out


def test_bad_bundles(tmp_path):
    with pytest.raises(MedsegError, match="no such model bundle"):
        load_bundle(tmp_path / "missing")
    with pytest.raises(MedsegError, match="not a model bundle"):
        load_bundle(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(MedsegError, match="unreadable model card"):
        load_bundle(tmp_path)
    (tmp_path / "model.json").write_text(_card().to_json())
    with pytest.raises(MedsegError, match="cannot read weights"):
        load_bundle(tmp_path)
    other = build_model(_card(arch_kwargs={"width": 8}))
    save_bundle(other, _card(arch_kwargs={"width": 8}), tmp_path / "w8")
    (tmp_path / "w8" / "model.json").write_text(_card().to_json())
    with pytest.raises(MedsegError, match="weights do not fit"):
        load_bundle(tmp_path / "w8")


def test_card_validation(tmp_path):
    with pytest.raises(MedsegError, match="no label has value 0"):
        _card(labels={"liver": 1, "spleen": 2}).validate()
    with pytest.raises(MedsegError, match="modality"):
        _card(modality="PET").validate()
    data = json.loads(_card().to_json())
    del data["labels"]
    with pytest.raises(MedsegError, match="field 'labels' is missing"):
        ModelCard.from_dict(data)
