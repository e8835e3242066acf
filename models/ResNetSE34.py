"""ResNetSE34: the "Thin ResNet-34" of the paper (|STFT| input, max-pooled stem, every stage strided)."""
from __future__ import annotations

import torch
import torchaudio
from torch import nn

from models.FrontEnd import HOP_LENGTH, N_FFT, WIN_LENGTH
from models.ResNetBlocks import SEBasicBlock
from models.ResNetSE34L import ResNetSE


class ThinResNetSE(ResNetSE):
    """ResNetSE34L's network on a 257-bin magnitude spectrogram, with a 3x3 max-pool stem and strided layer4."""

    model_name = "ResNetSE34"
    center = False

    def __init__(self, block: type[nn.Module], layers: list[int], num_filters: list[int], nOut: int,
                 log_input: bool = False, **kwargs) -> None:
        kwargs.pop("layer4_stride", None)
        super().__init__(block, layers, num_filters, nOut, log_input=log_input, layer4_stride=(2, 2), **kwargs)
        self.maxPool = nn.MaxPool2d(kernel_size=3, stride=(2, 1), padding=1)

    def make_front_end(self, n_mels: int) -> nn.Module:
        """|STFT| with a Hann window and no padding (n_mels is not used)."""
        return torchaudio.transforms.Spectrogram(n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH,
                                                 window_fn=torch.hann_window, center=False, power=1.0)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """7x7 convolution block followed by 3x3 max-pooling."""
        return self.maxPool(super().stem(x))


def MainModel(nOut: int = 256, **kwargs) -> nn.Module:
    """Build ResNetSE34 / Thin ResNet-34 (blocks 3-4-6-3, filters 16-32-64-128)."""
    return ThinResNetSE(SEBasicBlock, [3, 4, 6, 3], [16, 32, 64, 128], nOut, **kwargs)
