"""TC-ResNet (Choi et al. 2019, arXiv 1904.03814) in PyTorch.

The MFCC window [N, 98, 40] is read as a 40-channel 1-D sequence of 98 frames. A first conv (k=3)
is followed by residual blocks of two k=9 convs (BN + ReLU); a block that changes the channel count
uses stride 2 and a 1x1 strided shortcut (BN + ReLU), as in the authors' code. Global average pooling,
dropout and a linear layer give 12 logits; the exported graph ends in softmax.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = {
    "tc-resnet8": ([16, 24, 32, 48], 1.0),
    "tc-resnet14": ([16, 24, 24, 32, 32, 48, 48], 1.0),
    "tc-resnet8-1.5": ([16, 24, 32, 48], 1.5),
    "tc-resnet14-1.5": ([16, 24, 24, 32, 32, 48, 48], 1.5),
}


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                         nn.BatchNorm1d(cout))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        stride = 1 if cin == cout else 2
        self.conv1 = conv_bn(cin, cout, 9, stride)
        self.conv2 = conv_bn(cout, cout, 9)
        self.shortcut = None if cin == cout else nn.Sequential(conv_bn(cin, cout, 1, stride), nn.ReLU())
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.conv2(self.relu(self.conv1(x)))
        return self.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class TCResNet(nn.Module):
    def __init__(self, arch: str = "tc-resnet8", num_classes: int = 12, num_mfcc: int = 40,
                 dropout: float = 0.5, cmn: bool = False):
        super().__init__()
        self.cmn = cmn
        channels, width = ARCHS[arch]
        ch = [int(c * width) for c in channels]
        self.stem = nn.Sequential(conv_bn(num_mfcc, ch[0], 3), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(a, b) for a, b in zip(ch[:-1], ch[1:])])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(ch[-1], num_classes)

    def forward(self, features):
        """features [N, 98, 40] (time-major MFCC) -> logits [N, 12]."""
        if self.cmn:
            # Cepstral mean normalization over the window, inside the graph (the frontend is fixed):
            # removes stationary channel colouring; c0 (loudness) is kept as is.
            rest = features[:, :, 1:]
            features = torch.cat([features[:, :, :1], rest - rest.mean(dim=1, keepdim=True)], dim=2)
        x = self.blocks(self.stem(features.transpose(1, 2)))
        return self.fc(self.dropout(x.mean(dim=2)))


class Exported(nn.Module):
    """What ships: features -> softmax probabilities."""

    def __init__(self, net: TCResNet):
        super().__init__()
        self.net = net

    def forward(self, features):
        return torch.softmax(self.net(features), dim=1)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_flops(net: TCResNet, frames: int = 98, num_mfcc: int = 40) -> int:
    """Multiply-adds x 2 of the convs and the linear layer for one window (BN folded, ReLU and pooling
    not counted), the convention of the TC-ResNet paper (TC-ResNet8: 3.0M). Measured with hooks on a
    real forward pass, so output lengths are the ones the graph computes."""
    macs = 0

    def hook(m, _inp, out):
        nonlocal macs
        if isinstance(m, nn.Conv1d):
            macs += m.in_channels * m.out_channels * m.kernel_size[0] * out.shape[-1]
        else:
            macs += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, frames, num_mfcc))
    net.train(was_training)
    for h in handles:
        h.remove()
    return 2 * macs
