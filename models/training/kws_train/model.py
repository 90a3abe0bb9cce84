"""TC-ResNet (Choi et al. 2019, arXiv 1904.03814) in PyTorch.

The MFCC window [N, 98, 40] is read as a 40-channel 1-D sequence of 98 frames. A first conv (k=3)
is followed by residual blocks of two k=9 convs (BN + ReLU); a block that changes the channel count
uses stride 2 and a 1x1 strided shortcut (BN + ReLU), as in the authors' code. Global average pooling,
dropout and a linear layer give 12 logits; the exported graph ends in softmax.

Streamable variants (`STREAM_ARCHS`, e.g. `tc-resnet8-stream`) use unpadded ("valid") convolutions,
so every output column depends only on real frames and a stream can compute each column once
(`kws_train.streaming`). Their receptive field plus the pooled outputs cover the 98-frame window
exactly: with a stem of kernel 6 and blocks of kernel 5, one final column sees 90 frames, the final
layer's stride is 8 frames, and the mean of the last `pool` = 2 final columns spans 98 frames. All
grids are aligned to the window's *last* frame (leading frames that do not fit a stride are dropped),
and a block's shortcut reads the input columns at the end positions of the block's output
(the residual is right-aligned), so a window's columns are the stream's columns at the same times.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ARCHS = {
    "tc-resnet8": ([16, 24, 32, 48], 1.0),
    "tc-resnet14": ([16, 24, 24, 32, 32, 48, 48], 1.0),
    "tc-resnet8-1.5": ([16, 24, 32, 48], 1.5),
    "tc-resnet14-1.5": ([16, 24, 24, 32, 32, 48, 48], 1.5),
}


@dataclass(frozen=True)
class StreamSpec:
    """Geometry of a streamable (valid-convolution) TC-ResNet."""
    channels: tuple[int, ...]
    stem_kernel: int
    kernel: int | tuple[int, ...]  # of both convs of every block, or one per block
    pool: int  # final columns averaged (at the final layer's stride)

    def block_kernels(self) -> tuple[int, ...]:
        return block_kernels(self.kernel, len(self.channels) - 1)

    def receptive_field(self) -> int:
        rf, stride = self.stem_kernel, 1
        for a, b, k in zip(self.channels[:-1], self.channels[1:], self.block_kernels()):
            s = 1 if a == b else 2
            rf += (k - 1) * stride  # conv1 (strided) reads the input grid
            stride *= s
            rf += (k - 1) * stride  # conv2 reads conv1's grid
        return rf

    def total_stride(self) -> int:
        return 2 ** sum(a != b for a, b in zip(self.channels[:-1], self.channels[1:]))

    def window(self) -> int:
        """Frames a window needs: the receptive field of the last `pool` final columns."""
        return self.receptive_field() + (self.pool - 1) * self.total_stride()


def block_kernels(kernel: int | tuple[int, ...], blocks: int) -> tuple[int, ...]:
    """The kernel of each block's convs: one for all blocks, or one per block."""
    ks = (kernel,) * blocks if isinstance(kernel, int) else tuple(kernel)
    if len(ks) != blocks:
        raise ValueError(f"{len(ks)} kernels for {blocks} blocks")
    return ks


STREAM_ARCHS = {
    "tc-resnet8-stream": StreamSpec((16, 24, 32, 48), stem_kernel=6, kernel=5, pool=2),
    # TC-ResNet14-1.5's channels and strides (6 blocks, total stride 8). With valid convolutions one
    # kernel for all blocks does not fit 98 frames (receptive field = stem + 49 (k - 1): k = 3 alone
    # needs 98 + stem), so the kernel shrinks as the stride grows: every block's conv2 spans 8 frames
    # (5 taps at stride 2, 3 at 4, 2 at 8); receptive field 6 + 84 = 90, two final columns = 98.
    # Defined for cost measurements (kws_train.streaming cost-only); not trained or shipped.
    "tc-resnet14-1.5-stream": StreamSpec((24, 36, 36, 48, 48, 72, 72), stem_kernel=6, kernel=(5, 5, 3, 3, 2, 2),
                                         pool=2),
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


def valid_conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, stride=stride, padding=0, bias=False), nn.BatchNorm1d(cout))


def end_aligned(x, length: int, k: int, stride: int):
    """Drop the leading columns of x [N, C, T] that do not fit the stride grid of a valid conv
    (kernel k, stride) ending at the last column, so the conv's last output ends at x's last column."""
    return x[:, :, (length - k) % stride:]


class ValidBlock(nn.Module):
    """Residual block of two valid k-convs; the shortcut (identity or 1x1 conv + BN + ReLU) reads x at
    the end positions of the output columns."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.k = k
        self.stride = 1 if cin == cout else 2
        self.conv1 = valid_conv_bn(cin, cout, k, self.stride)
        self.conv2 = valid_conv_bn(cout, cout, k)
        self.shortcut = None if cin == cout else nn.Sequential(valid_conv_bn(cin, cout, 1), nn.ReLU())
        self.relu = nn.ReLU()

    def forward(self, x):
        x = end_aligned(x, x.shape[2], self.k, self.stride)
        y = self.conv2(self.relu(self.conv1(x)))
        n = y.shape[2]
        # Output column j ends at input column (len - 1) - stride * (n - 1 - j).
        first = x.shape[2] - 1 - self.stride * (n - 1)
        skip = x[:, :, first::self.stride]
        return self.relu(y + (skip if self.shortcut is None else self.shortcut(skip)))


class TCResNet(nn.Module):
    def __init__(self, arch: str = "tc-resnet8", num_classes: int = 12, num_mfcc: int = 40,
                 dropout: float = 0.5, cmn: bool = False):
        super().__init__()
        self.cmn = cmn
        self.spec = STREAM_ARCHS.get(arch)
        if self.spec is not None:
            if cmn:
                raise ValueError(f"{arch}: cmn (a mean over the whole window) cannot be streamed")
            ch = list(self.spec.channels)
            self.stem = nn.Sequential(valid_conv_bn(num_mfcc, ch[0], self.spec.stem_kernel), nn.ReLU())
            self.blocks = nn.Sequential(*[ValidBlock(a, b, k) for a, b, k in
                                          zip(ch[:-1], ch[1:], self.spec.block_kernels())])
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(ch[-1], num_classes)
            return
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
        if self.spec is not None:
            x = x[:, :, -self.spec.pool:]
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
