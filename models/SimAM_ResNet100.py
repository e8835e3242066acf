"""SimAM_ResNet100 (wespeaker's SimAM_ResNet100_ASP): ResNet34's basic blocks, 6, 16, 24, 3 per stage, each with
the parameter-free SimAM gate (Yang et al., 2021) on its second convolution's output before the shortcut; widths
64-512 (twice ResNet34's), ASP pooling (models/StatsPooling.py), one linear embedding. Runs on any front end of
the fbank models; wespeaker's releases use its Kaldi fbank (80 mels, nOut 256).
"""
from models.ResNetFamily import SIMAM_OPTIONS, simam_resnet

OPTIONS = dict(SIMAM_OPTIONS)
MainModel = simam_resnet([6, 16, 24, 3], "SimAM_ResNet100")
