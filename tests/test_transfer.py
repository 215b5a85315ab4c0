"""Fine-tuning starts from another bundle's weights: ``medseg.training.transfer_weights``.

Classifier rows are matched by label name (so a different number or order of classes is fine);
every other layer must have the same shape, else the source is refused naming the layer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medseg.bundle import Bundle, ModelCard, build_model
from medseg.errors import MedsegError
from medseg.training import transfer_weights


def _card(labels: dict[str, int], context: int = 1) -> ModelCard:
    return ModelCard(name="t", labels=labels, modality="CT", arch_kwargs={"width": 4}, context_slices=context)


def _model(card: ModelCard, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(card)
    with torch.no_grad():  # batch-norm buffers too, so that "copied" is visible everywhere
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.uniform_(-1.0, 1.0) if "running_var" not in name else t.uniform_(0.5, 2.0)
    return model


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


SOURCE_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}


@pytest.fixture
def source() -> Bundle:
    card = _card(SOURCE_LABELS)
    return Bundle(card, _model(card, seed=1), path=Path("source_bundle"))


@pytest.mark.parametrize(
    "labels, rows",  # rows: target class index -> source class index (None: a new class keeps its init)
    [
        ({"background": 0, "liver": 1, "lesion": 2, "spleen": 3, "kidney": 4}, [0, 1, None, 2, 3]),  # one more class
        ({"background": 0, "spleen": 1, "tumour": 2}, [0, 2, None]),  # fewer classes, renumbered
    ],
)
def test_classifier_rows_follow_label_names(source, labels, rows):
    card = _card(labels)
    model = _model(card, seed=2)
    init = _snapshot(model)
    kept = transfer_weights(source, model, card)
    assert kept == [name for name, row in zip(card.class_names, rows) if row is not None]

    src = source.model.state_dict()
    got = model.state_dict()
    assert got["head.weight"].shape[0] == len(labels) != src["head.weight"].shape[0]
    for key in ("head.weight", "head.bias"):
        for target, row in enumerate(rows):
            expected = init[key][target] if row is None else src[key][row]
            torch.testing.assert_close(got[key][target], expected, rtol=0, atol=0, msg=f"{key}[{target}]")
    body = [k for k in got if not k.startswith("head.")]
    assert len(body) > 10
    for key in body:  # every other tensor is the source's, exactly
        torch.testing.assert_close(got[key], src[key], rtol=0, atol=0, msg=key)
        if got[key].is_floating_point():
            assert not torch.equal(got[key], init[key]), key


def test_a_different_number_of_input_channels_is_refused_naming_the_layer(source):
    card = _card(SOURCE_LABELS, context=2)  # 5 input channels, the source has 3
    model = _model(card, seed=2)
    init = _snapshot(model)
    first = next(iter(init))
    with pytest.raises(MedsegError) as err:
        transfer_weights(source, model, card)
    message = str(err.value)
    assert message == f"source_bundle: layer {first} (4, 3, 3, 3) does not fit (4, 5, 3, 3)"
    for key, value in model.state_dict().items():  # nothing was copied
        assert torch.equal(value, init[key]), key
