"""SegNet (Badrinarayanan, Kendall & Cipolla, 2015) for 2D / 2.5D slices.

Encoder: the 13 convolutions of VGG16, each followed by batch norm and ReLU, in five stages of
(2, 2, 3, 3, 3) convolutions with widths (w, 2w, 4w, 8w, 8w); every stage ends with 2x2 max
pooling whose indices are kept. Decoder: the mirror image; each of its five stages first
max-unpools with the indices of the matching encoder stage, then convolves. A 3x3 convolution
then classifies every pixel. With ``width=64`` this is the paper's network (about 29.4 M
parameters for 3 input channels).

Inputs of any height and width work: they are padded (edge values) to a multiple of 32 and the
logits are cropped back, so the output always has the input's size.

>>> import torch
>>> net = SegNet(in_channels=3, num_classes=6, width=8).eval()
>>> net(torch.zeros(1, 3, 97, 131)).shape
torch.Size([1, 6, 97, 131])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_DEPTHS = (2, 2, 3, 3, 3)
STAGE_WIDTHS = (1, 2, 4, 8, 8)  # multiples of the base width


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegNetEncoder(nn.Module):
    """VGG16-style convolution stages; ``forward`` returns features and the pooling indices/sizes."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        cin = in_channels
        for depth, mult in zip(STAGE_DEPTHS, STAGE_WIDTHS):
            cout = width * mult
            layers = [_conv_bn_relu(cin if i == 0 else cout, cout) for i in range(depth)]
            self.stages.append(nn.Sequential(*layers))
            cin = cout
        self.out_channels = cin

    def forward(self, x: torch.Tensor):
        indices, sizes = [], []
        for stage in self.stages:
            x = stage(x)
            sizes.append(x.shape[-2:])
            x, idx = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
            indices.append(idx)
        return x, indices, sizes


class SegNetDecoder(nn.Module):
    """Mirror of the encoder: unpool with the stored indices, then convolve, five times."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        widths = [width * m for m in STAGE_WIDTHS]
        for s in reversed(range(len(STAGE_DEPTHS))):
            cin = widths[s]
            cout = widths[s - 1] if s > 0 else widths[0]
            depth = STAGE_DEPTHS[s]
            layers = [_conv_bn_relu(cin, cin if i < depth - 1 else cout) for i in range(depth)]
            self.stages.append(nn.Sequential(*layers))
        self.out_channels = widths[0]

    def forward(self, x: torch.Tensor, indices, sizes) -> torch.Tensor:
        for stage, idx, size in zip(self.stages, reversed(indices), reversed(sizes)):
            # SegNet pads inputs to a multiple of 32, so every pooled map is exactly half its input
            # and the default output size is right; passing output_size costs a slow validation.
            out = None if tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]) else size
            x = F.max_unpool2d(x, idx, kernel_size=2, stride=2, output_size=out)
            x = stage(x)
        return x


class SegNet(nn.Module):
    """SegNet with encoder / decoder / per-pixel classifier.

    Args:
        in_channels: 1 for single slices, ``2k+1`` for k neighbouring slices on each side (2.5D).
        num_classes: number of output classes, background included.
        width: base channel count (64 in the paper).
    """

    multiple = 2 ** len(STAGE_DEPTHS)

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1:
            raise ValueError(
                f"SegNet needs in_channels >= 1, num_classes >= 2 and width >= 1 "
                f"(got {in_channels}, {num_classes}, {width})"
            )
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        self.encoder = SegNetEncoder(in_channels, width)
        self.decoder = SegNetDecoder(width)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, kernel_size=3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        feats, indices, sizes = self.encoder(x)
        logits = self.head(self.decoder(feats, indices, sizes))
        return logits[..., :h, :w]
