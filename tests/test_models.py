import pytest
import torch

from medseg.models import SegNet, create_model, list_models


@pytest.mark.parametrize("size", [(360, 480), (97, 131), (32, 32), (1, 5)])
def test_output_has_input_size(size):
    torch.manual_seed(0)
    net = SegNet(in_channels=3, num_classes=5, width=4).eval()
    with torch.inference_mode():
        y = net(torch.randn(2, 3, *size))
    assert y.shape == (2, 5, *size)
    assert torch.isfinite(y).all()


def test_paper_configuration_parameter_count():
    net = SegNet(in_channels=3, num_classes=12, width=64)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 29.4e6) / 29.4e6 < 0.01, n


def test_architecture_is_segnet():
    net = SegNet(in_channels=1, num_classes=2, width=8)
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13  # VGG16's convolutions
    assert [len(s) for s in net.encoder.stages] == [2, 2, 3, 3, 3]
    assert [len(s) for s in net.decoder.stages] == [3, 3, 3, 2, 2]
    assert all(isinstance(m[1], torch.nn.BatchNorm2d) for s in net.encoder.stages for m in s)


def test_decoder_unpools_with_encoder_indices():
    """The decoder places values exactly where the encoder's max-pooling found its maxima."""
    torch.manual_seed(0)
    net = SegNet(in_channels=1, num_classes=2, width=4).eval()
    x = torch.randn(1, 1, 64, 64)
    calls = []
    orig = torch.nn.functional.max_unpool2d

    def spy(inp, idx, *a, **k):
        calls.append(idx)
        return orig(inp, idx, *a, **k)

    torch.nn.functional.max_unpool2d = spy
    try:
        with torch.inference_mode():
            _, indices, _ = net.encoder(x)
            net(x)
    finally:
        torch.nn.functional.max_unpool2d = orig
    assert len(calls) == 5
    for used, kept in zip(calls, reversed(indices)):
        assert torch.equal(used, kept)


def test_gradients_reach_first_layer():
    torch.manual_seed(0)
    net = SegNet(in_channels=3, num_classes=4, width=4)
    x = torch.randn(2, 3, 48, 40)
    y = torch.randint(0, 4, (2, 48, 40))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    g = net.encoder.stages[0][0][0].weight.grad
    assert g is not None and g.abs().sum() > 0


def test_registry_lists_valid_names():
    assert "segnet" in list_models()
    assert isinstance(create_model("segnet", in_channels=1, num_classes=2, width=4), SegNet)
    with pytest.raises(KeyError, match="valid names: segnet"):
        create_model("unet3000")


def test_bad_arguments():
    with pytest.raises(ValueError):
        SegNet(in_channels=0, num_classes=3)
