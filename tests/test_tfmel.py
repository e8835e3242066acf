"""--frontend tfmel (models/TFMelFrontEnd.py) against a float64 NumPy computation of its formula, its framing and
options, its export, and how the wespeaker importer maps a tfmel release onto it."""
import numpy as np
import pytest
import torch

from deployment.export import MIN_COSINE, export_model
from importers.release_files import ReleaseError
from importers.wespeaker import front_end_settings, model_settings
from models.Fbanks import build_frontend
from SpeakerNet import SpeakerNet

TFMEL_ARGS = {"n_mels": 72, "hop_length": 160, "win_length": 400, "n_fft": 512, "f_min": 20, "f_max": 7600,
              "do_preemph": True, "norm_signal": True, "do_spec_aug": False, "eps": 1e-8}


def reference_features(wave: np.ndarray, n_mels: int, scale: float = 1.0, normalise: bool = True,
                       preemphasis: float = 0.97, f_min: float = 20.0, f_max: float = 7600.0) -> np.ndarray:
    """The tfmel formula in float64 NumPy for one waveform: [n_mels, frames]."""
    x = wave.astype(np.float64) * scale
    if normalise:
        x = (x - x.mean()) / (x.std() + 1e-8)
    if preemphasis:
        x = x - preemphasis * np.concatenate([x[1:2], x[:-1]])
    x = np.pad(x, 80)
    frames = np.stack([x[start:start + 400] for start in range(0, len(x) - 400 + 1, 160)])
    spectrum = np.fft.rfft(frames * np.hamming(400), n=512)[:, :256]
    power = np.clip(np.abs(spectrum) ** 2, 1e-8, 1e8)

    def mel(hz):
        return 2595 * np.log10(1 + np.asarray(hz) / 700)

    edges = np.linspace(mel(f_min), mel(f_max), n_mels + 2)
    bins = mel(np.arange(256) * 8000 / 255)
    filters = np.zeros((n_mels, 256))
    for band in range(n_mels):
        left, centre, right = edges[band:band + 3]
        filters[band] = np.maximum(0, np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)))
    feats = np.log(np.clip(filters @ power.T, 1e-8, 1e8) + 1e-8)
    return feats - feats.mean(axis=1, keepdims=True)


@pytest.mark.parametrize("options, reference", [
    ({}, {}),
    ({"waveform_scale": 1000.0, "waveform_norm": False, "preemphasis": 0.0, "mel_fmin": 0.0, "mel_fmax": 8000.0},
     {"scale": 1000.0, "normalise": False, "preemphasis": 0.0, "f_min": 0.0, "f_max": 8000.0}),
], ids=["defaults", "scaled-plain"])
def test_features_match_the_formula(options, reference):
    audio = 0.1 * torch.randn(2, 16_000 + 37, generator=torch.Generator().manual_seed(4))
    front_end = build_frontend(72, "tfmel", **options)
    feats = front_end(audio)
    assert feats.shape == (2, 72, front_end.frames(audio.shape[-1])) and feats.dtype == torch.float32
    for row, wave in zip(feats, audio):
        expected = reference_features(wave.numpy(), 72, **reference)
        np.testing.assert_allclose(row.numpy(), expected, rtol=0, atol=2e-4 * np.abs(expected).max())


def test_framing_and_state():
    front_end = build_frontend(72, "tfmel")
    assert front_end.feature_dim == 72 and front_end.state_dict() == {}
    assert front_end.frames(239) == 0 and front_end.frames(240) == 1 and front_end.frames(16_000) == 99
    for frames in (1, 2, 100):
        samples = front_end.min_samples(frames)
        assert front_end.frames(samples) == frames and front_end.frames(samples - 1) == frames - 1
        assert front_end(torch.zeros(1, samples) + 0.01 * torch.randn(1, samples)).shape[-1] == frames


@pytest.mark.parametrize("options, message", [
    ({"frontend_window": "hann"}, r"--frontend_window does not apply to --frontend tfmel"),
    ({"mel_fmax": 9000.0}, r"--mel_fmin and --mel_fmax must satisfy"),
    ({"preemphasis": 1.5}, r"--preemphasis is a coefficient from 0 to 1"),
])
def test_refused_options(options, message):
    with pytest.raises(ValueError, match=message):
        build_frontend(72, "tfmel", **options)


def test_importer_maps_tfmel_args():
    dataset = {"frontend": "tfmel", "resample_rate": 16000, "tfmel_args": TFMEL_ARGS}
    assert front_end_settings({"dataset_args": dataset}, 72, "config.yaml") == {
        "frontend": "tfmel", "waveform_scale": 32768.0, "waveform_norm": True, "preemphasis": 0.97,
        "mel_fmin": 20.0, "mel_fmax": 7600.0}
    config = {"model": "ReDimNet2B6", "model_args": {"feat_dim": 72, "embed_dim": 192, "pooling_func": "ASTP"}}
    assert model_settings(config, {}, "config.yaml")[0] == {"model": "ReDimNet2B6", "n_mels": 72, "nOut": 192}


@pytest.mark.parametrize("dataset, message", [
    ({"tfmel_args": dict(TFMEL_ARGS, n_fft=1024)}, r"tfmel_args: n_fft must be 512 here, got 1024"),
    ({"tfmel_args": dict(TFMEL_ARGS, eps=1e-6)}, r"tfmel_args: eps must be 1e-08 here"),
    ({"tfmel_args": dict(TFMEL_ARGS, window="hann")}, r"tfmel_args: 'window' is not followed"),
    ({"tfmel_args": dict(TFMEL_ARGS, n_mels=80)}, r"n_mels 80 differs from model_args feat_dim 72"),
    ({"tfmel_args": TFMEL_ARGS, "resample_rate": 8000}, r"resample_rate must be 16000 here, got 8000"),
    ({"frontend": "s3prl"}, r"frontend 's3prl' \(a self-supervised front end\) is not importable"),
])
def test_importer_refuses_tfmel_settings(dataset, message):
    with pytest.raises(ReleaseError, match=message):
        front_end_settings({"dataset_args": {"frontend": "tfmel", **dataset}}, 72, "config.yaml")


def test_importer_refuses_redimnet2_model_args():
    config = {"model": "ReDimNet2B6", "model_args": {"feat_dim": 72, "embed_dim": 192, "pooling_func": "TSTP"}}
    with pytest.raises(ReleaseError, match=r"model_args 'pooling_func' is 'TSTP'; this framework's ReDimNet2 has"):
        model_settings(config, {}, "config.yaml")
    config["model_args"] = {"feat_dim": 72, "embed_dim": 192, "emb_bn": True}
    with pytest.raises(ReleaseError, match=r"model_args 'emb_bn' is not a setting of this framework's ReDimNet2"):
        model_settings(config, {}, "config.yaml")


@pytest.mark.parametrize("kind", ["onnx", pytest.param("torchscript", marks=pytest.mark.integration)])
def test_export_matches_pytorch(kind, tmp_path):
    torch.manual_seed(0)
    settings = {"model": "ReDimNet2B0", "n_mels": 72, "frontend": "tfmel"}
    net = SpeakerNet(trainfunc="angleproto", nOut=32, log_input=True, encoder_type="SAP", **settings).eval()
    parity = export_model(net, settings, kind, str(tmp_path / f"model.{kind}"), seconds=(1.0, 1.3, 1.1))
    assert parity.min_cosine >= MIN_COSINE and parity.max_abs_diff < 1e-3
