"""The fbank models' front ends (--frontend logmel, kaldi, speechbrain): reference parity, framing, options."""
import numpy as np
import pytest
import torch
import torchaudio
import yaml
from torchaudio.compliance import kaldi

import arguments
import embedSpeaker
import exportModel
from deployment.model_loading import resolve_settings
from models import ECAPA_TDNN, ResNet34
from models.Fbanks import KaldiFbank, SpeechBrainFbank, build_frontend, frontend_settings
from models.FrontEnd import MeanNormalisedFbank
from settings.plugins import PluginError
from SpeakerNet import SpeakerNet

WINDOWS = ("povey", "hamming", "hann", "rectangular", "blackman")
TORCHAUDIO_WINDOW = {"hann": "hanning"}  # torchaudio's name of Kaldi's Hann window
LENGTHS = (400, 561, 8_000, 16_123)  # one frame, a whole number of hops and non-multiples of the 160-sample hop


def speech_like(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Voiced tones with harmonics plus noise, in [-1, 1], a different pitch per row."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16_000
    rows = []
    for row in range(batch):
        pitch = 110.0 + 37.0 * row
        voiced = sum(torch.sin(2 * torch.pi * pitch * k * t + k) / k for k in range(1, 15))
        rows.append(0.1 * voiced + 0.01 * torch.randn(samples, generator=generator))
    return torch.stack(rows)


def kaldi_reference(wave: torch.Tensor, n_mels: int, window: str, preemphasis: float, scale: float,
                    dither: float = 0.0) -> torch.Tensor:
    """torchaudio's Kaldi fbank of one utterance [samples], as [n_mels, frames]."""
    return kaldi.fbank(wave[None] * scale, num_mel_bins=n_mels, frame_length=25, frame_shift=10,
                       sample_frequency=16000, window_type=TORCHAUDIO_WINDOW.get(window, window),
                       preemphasis_coefficient=preemphasis, dither=dither, use_energy=False).T


def speechbrain_reference(wave: np.ndarray, n_mels: int, periodic_window: np.ndarray, scale: float = 1.0,
                          mean_norm: bool = True) -> np.ndarray:
    """SpeechBrain's Fbank (+ sentence mean normalisation) of one utterance, in float64 numpy: [n_mels, frames]."""
    padded = np.pad(wave.astype(np.float64) * scale, 200)
    starts = range(0, len(padded) - 400 + 1, 160)
    power = np.abs(np.fft.rfft(np.stack([padded[s:s + 400] for s in starts]) * periodic_window, axis=1)) ** 2
    mel_points = np.linspace(0.0, 2595 * np.log10(1 + 8000 / 700), n_mels + 2)
    hz = 700 * (10 ** (mel_points / 2595) - 1)
    frequencies = np.linspace(0, 8000, 201)
    filters = np.zeros((201, n_mels))
    for m in range(n_mels):  # symmetric triangles: centre hz[m + 1], half-width hz[m + 1] - hz[m]
        filters[:, m] = np.maximum(0.0, 1 - np.abs(frequencies - hz[m + 1]) / (hz[m + 1] - hz[m]))
    decibels = 10 * np.log10(np.maximum(power @ filters, 1e-10))
    decibels = np.maximum(decibels, decibels.max() - 80)
    if mean_norm:
        decibels = decibels - decibels.mean(axis=0)
    return decibels.T


# ---------------------------------------------------------------- kaldi

@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("preemphasis", [0.0, 0.97])
@pytest.mark.parametrize("scale", [1.0, 32768.0])
def test_kaldi_matches_torchaudio_compliance(window, preemphasis, scale):
    front_end = build_frontend(40, "kaldi", frontend_window=window, waveform_scale=scale, preemphasis=preemphasis,
                               mean_norm=False).eval()
    for samples in LENGTHS:
        batch = speech_like(2, samples)
        feats = front_end(batch)
        assert feats.shape == (2, 40, front_end.frames(samples)) and feats.dtype == torch.float32
        for row in range(2):
            expected = kaldi_reference(batch[row], 40, window, preemphasis, scale)
            torch.testing.assert_close(feats[row], expected, rtol=1e-4, atol=2e-3)


def test_kaldi_defaults_and_mean_normalisation():
    """Default options are Kaldi's (povey, pre-emphasis 0.97, no dither); mean_norm removes the time mean."""
    batch = speech_like(2, 8_123)
    feats = build_frontend(80, "kaldi").eval()(batch)
    for row in range(2):
        expected = kaldi_reference(batch[row], 80, "povey", 0.97, 1.0)
        torch.testing.assert_close(feats[row], expected - expected.mean(dim=-1, keepdim=True), rtol=1e-4,
                                   atol=2e-3)


def test_kaldi_constants_are_not_saved():
    front_end = build_frontend(80, "kaldi", frontend_window="hamming", waveform_scale=32768.0, dither=1.0)
    assert isinstance(front_end, KaldiFbank) and front_end.state_dict() == {}
    model = ECAPA_TDNN.MainModel(nOut=32, channels=16, frontend="kaldi")
    assert not [key for key in model.state_dict() if key.startswith("fbank.")]


def test_dither_only_in_training():
    front_end = build_frontend(80, "kaldi", frontend_window="hamming", waveform_scale=32768.0, dither=1.0,
                               mean_norm=False)
    undithered = build_frontend(80, "kaldi", frontend_window="hamming", waveform_scale=32768.0,
                                 mean_norm=False).eval()
    batch = speech_like(2, 8_000)
    front_end.eval()
    torch.testing.assert_close(front_end(batch), undithered(batch), rtol=1e-6, atol=1e-6)
    front_end.train()
    first, second = front_end(batch), front_end(batch)
    assert not torch.allclose(first, second, atol=1e-3)
    torch.manual_seed(7)
    dithered = front_end(batch[:1])[0]
    torch.manual_seed(7)  # the same noise, drawn as torchaudio draws it
    expected = kaldi_reference(batch[0], 80, "hamming", 0.97, 32768.0, dither=1.0)
    torch.testing.assert_close(dithered, expected, rtol=1e-4, atol=2e-3)


# ---------------------------------------------------------------- speechbrain

@pytest.mark.parametrize("window, scale, mean_norm", [("hamming", 1.0, True), ("hann", 32768.0, False)])
def test_speechbrain_matches_an_independent_computation(window, scale, mean_norm):
    periodic = {"hamming": 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(400) / 400),
                "hann": 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)}[window]
    front_end = build_frontend(40, "speechbrain", frontend_window=window if window != "hamming" else None,
                               waveform_scale=scale, mean_norm=mean_norm)
    assert isinstance(front_end, SpeechBrainFbank) and front_end.state_dict() == {}
    for samples in (1_000, 16_123):
        batch = speech_like(2, samples, seed=samples)
        feats = front_end(batch)
        assert feats.shape == (2, 40, front_end.frames(samples))
        for row in range(2):
            expected = speechbrain_reference(batch[row].numpy(), 40, periodic, scale, mean_norm)
            np.testing.assert_allclose(feats[row].numpy(), expected, rtol=1e-4, atol=2e-3)


def test_speechbrain_clips_80_db_below_the_maximum():
    batch = speech_like(1, 8_000)
    batch[:, 3_000:5_000] = 0  # digital silence: far below the floor
    feats = build_frontend(40, "speechbrain", mean_norm=False)(batch)
    torch.testing.assert_close(feats.min(), feats.max() - 80, rtol=0, atol=1e-3)


# ---------------------------------------------------------------- every front end

FRONT_ENDS = {"logmel": {}, "kaldi": {"preemphasis": 0.9, "frontend_window": "hamming"},
              "speechbrain": {"waveform_scale": 32768.0}}


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_batched_equals_one_at_a_time_and_stays_float32(name):
    front_end = build_frontend(80, name, **FRONT_ENDS[name]).eval()
    batch = speech_like(3, 12_345).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = front_end(batch)
    assert feats.dtype == torch.float32 and not feats.requires_grad
    for row in range(3):
        torch.testing.assert_close(front_end(batch[row:row + 1].detach())[0], feats[row], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_frames_and_min_samples_count_the_output(name):
    front_end = build_frontend(80, name)
    for samples in (front_end.min_samples(1), front_end.min_samples(2), 559, 560, 561, 16_000, 16_159):
        samples = max(samples, front_end.min_samples(1))
        assert front_end(speech_like(1, samples)).shape[-1] == front_end.frames(samples), samples
    for frames in range(1, 12):
        shortest = front_end.min_samples(frames)
        assert front_end.frames(shortest) >= frames > front_end.frames(shortest - 1)


@pytest.mark.parametrize("name", FRONT_ENDS)
@pytest.mark.parametrize("module, kwargs, min_frames", [(ECAPA_TDNN, {"channels": 16}, 2), (ResNet34, {}, 9)])
def test_model_minimum_length_counts_the_front_end(name, module, kwargs, min_frames):
    model = module.MainModel(nOut=32, frontend=name, **FRONT_ENDS[name], **kwargs).eval()
    assert model.min_samples == model.fbank.min_samples(min_frames)
    with torch.no_grad():
        assert model(speech_like(1, model.min_samples)).shape == (1, 32)
    with pytest.raises(ValueError, match=f"needs at least {model.min_samples} samples"):
        model(speech_like(1, model.min_samples - 1))


def test_kaldi_frames_need_400_samples():
    front_end = build_frontend(80, "kaldi")
    assert front_end.min_samples(1) == 400 and front_end.frames(399) == 0 and front_end.frames(400) == 1
    assert build_frontend(80, "speechbrain").frames(159) == 1  # centred frames: no whole window needed
    with pytest.raises(ValueError, match="kaldi front end needs at least 400 samples"):
        front_end(torch.zeros(1, 399))


def test_logmel_is_unchanged():
    front_end = build_frontend(80)
    assert type(front_end) is MeanNormalisedFbank and type(build_frontend(80, None)) is MeanNormalisedFbank
    assert list(front_end.state_dict()) == ["mel.spectrogram.window", "mel.mel_scale.fb"]
    batch = speech_like(2, 16_000)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=512, win_length=400, hop_length=160,
                                               window_fn=torch.hamming_window, n_mels=80)
    expected = (mel(batch) + 1e-6).log()
    torch.testing.assert_close(front_end(batch), expected - expected.mean(dim=-1, keepdim=True), rtol=1e-5,
                               atol=1e-5)
    keys = ECAPA_TDNN.MainModel(nOut=32, channels=16, frontend="logmel").state_dict()
    assert [key for key in keys if key.startswith("fbank.")] == ["fbank.mel.spectrogram.window",
                                                                "fbank.mel.mel_scale.fb"]


# ---------------------------------------------------------------- options and errors

@pytest.mark.parametrize("settings, message", [
    ({"frontend": "speechbrain", "preemphasis": 0.97}, r"--preemphasis does not apply to --frontend speechbrain"),
    ({"frontend": "logmel", "mean_norm": False}, r"--mean_norm does not apply to --frontend logmel"),
    ({"frontend": "kaldi", "frontend_window": "hanning"}, r"--frontend_window 'hanning' is not a window; choose"),
    ({"frontend": "mfcc"}, r"--frontend 'mfcc' is not a front end; choose logmel, kaldi, speechbrain"),
    ({"frontend": "kaldi", "waveform_scale": 0.0}, r"--waveform_scale must be above 0"),
    ({"frontend": "kaldi", "preemphasis": 1.5}, r"--preemphasis is a coefficient from 0 to 1"),
    ({"frontend": "kaldi", "dither": -1.0}, r"--dither must be 0 or above"),
])
def test_bad_option_names_the_flag(settings, message):
    with pytest.raises(ValueError, match=message):
        build_frontend(80, **settings)


def test_frontend_settings_picks_the_front_end_flags():
    flags = {"frontend": "kaldi", "dither": None, "nOut": 32, "model": "ECAPA_TDNN"}
    assert frontend_settings(flags) == {"frontend": "kaldi", "dither": None}


def test_models_with_their_own_features_refuse_a_front_end():
    for flags in ({"frontend": "kaldi"}, {"mean_norm": False}):
        with pytest.raises(PluginError, match=r"ResNetSE34L computes its own features; the front-end flags apply "
                                              r"to CAMPPlus, ECAPA_TDNN, ERes2NetV2, MHFA, ReDimNet2B0, .*ReDimNetB6, "
                                              r"ResNet152, ResNet221, ResNet293, ResNet34, SSL_MFA, SimAM_ResNet100, "
                                              r"SimAM_ResNet34$"):
            SpeakerNet(model="ResNetSE34L", trainfunc="angleproto", nOut=32, **flags)
    SpeakerNet(model="ResNetSE34L", trainfunc="angleproto", nOut=32, frontend="logmel", dither=None)


KALDI_FLAGS = ["--frontend", "kaldi", "--frontend_window", "hamming", "--waveform_scale", "32768", "--dither", "1.0"]
ECAPA_FLAGS = ["--model", "ECAPA_TDNN", "--trainfunc", "softmax", "--nClasses", "4", "--nOut", "32", "--channels",
               "16", "--n_mels", "80", "--eval_frames", "100", "--num_eval", "2"]


@pytest.fixture(scope="module")
def ecapa_checkpoint(tmp_path_factory):
    """A bare state_dict of a small ECAPA_TDNN on the kaldi front end (its settings come from flags)."""
    torch.manual_seed(2)
    net = SpeakerNet(model="ECAPA_TDNN", trainfunc="softmax", nClasses=4, nOut=32, channels=16, n_mels=80,
                     frontend="kaldi", frontend_window="hamming", waveform_scale=32768.0, dither=1.0)
    path = tmp_path_factory.mktemp("frontend") / "ecapa.model"
    torch.save(net.state_dict(), path)
    return str(path)


def one_line_error(main, argv, capsys) -> str:
    """Run a tool expecting exit status 1 and one 'Error: ' line; return the line."""
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("Error: ") and error.count("\n") == 1, error
    return error.strip()


def test_front_end_mistakes_are_one_line(ecapa_checkpoint, tmp_path, capsys):
    output = str(tmp_path / "x.pkg")
    line = one_line_error(exportModel.main, ["--initial_model", ecapa_checkpoint, "--format", "package", "--output",
                                             output, *ECAPA_FLAGS, "--frontend", "speechbrain", "--preemphasis",
                                             "0.97"], capsys)
    assert "--preemphasis does not apply to --frontend speechbrain" in line
    lite = SpeakerNet(model="ResNetSE34L", trainfunc="angleproto", nOut=32)
    torch.save(lite.state_dict(), tmp_path / "lite.model")
    line = one_line_error(exportModel.main, ["--initial_model", str(tmp_path / "lite.model"), "--format", "package",
                                             "--output", output, "--model", "ResNetSE34L", "--trainfunc",
                                             "angleproto", "--nOut", "32", "--frontend", "kaldi"], capsys)
    assert "--frontend kaldi: ResNetSE34L computes its own features" in line and "ECAPA_TDNN" in line


def test_package_keeps_the_front_end(ecapa_checkpoint, tiny_corpus, tmp_path, capsys):
    package = tmp_path / "ecapa.pkg"
    assert exportModel.main(["--initial_model", ecapa_checkpoint, "--format", "package", "--output", str(package),
                             *ECAPA_FLAGS, *KALDI_FLAGS]) == 0
    saved = torch.load(package, weights_only=True)["args"]
    assert (saved["frontend"], saved["frontend_window"], saved["waveform_scale"], saved["dither"]) == (
        "kaldi", "hamming", 32768.0, 1.0)
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    outputs = {}
    for name, flags in (("checkpoint", [ecapa_checkpoint, *ECAPA_FLAGS, *KALDI_FLAGS]), ("package", [str(package)])):
        outputs[name] = tmp_path / f"{name}.npy"
        assert embedSpeaker.main(["embed", wav, "--output", str(outputs[name]), "--initial_model", *flags]) == 0
    from_checkpoint, from_package = np.load(outputs["checkpoint"]), np.load(outputs["package"])
    assert from_package.shape == (2, 32)
    np.testing.assert_allclose(from_package, from_checkpoint, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    # without the flags the checkpoint builds a logmel front end, whose mel buffers the file lacks
    line = one_line_error(embedSpeaker.main, ["embed", wav, "--output", str(tmp_path / "logmel.npy"),
                                              "--initial_model", ecapa_checkpoint, *ECAPA_FLAGS], capsys)
    assert "does not fit a ECAPA_TDNN" in line and "--frontend" in line


def test_yaml_null_means_the_front_end_default(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: ECAPA_TDNN\nfrontend: kaldi\nfrontend_window: null\nwaveform_scale: 32768\n"
                      "preemphasis: null\ndither: 1\nmean_norm: null\n")
    args = arguments.parse_arguments(["--config", str(config)])
    assert (args.frontend, args.frontend_window, args.waveform_scale, args.preemphasis, args.dither,
            args.mean_norm) == ("kaldi", None, 32768.0, None, 1.0, None)
    saved = tmp_path / "saved.yaml"  # the run's config.yaml, loaded again
    saved.write_text(yaml.safe_dump(arguments.resolved_config(args)))
    again = arguments.parse_arguments(["--config", str(saved)])
    assert frontend_settings(vars(again)) == frontend_settings(vars(args))
    front_end = ECAPA_TDNN.MainModel(**{**vars(again), "channels": 16, "nOut": 32}).fbank
    assert isinstance(front_end, KaldiFbank) and front_end.spectrum.preemphasis == 0.97
    assert front_end.mean_norm is True and front_end.waveform_scale == 32768.0
    settings = resolve_settings({**frontend_settings(vars(args)), "model": "ECAPA_TDNN", "trainfunc": "softmax"},
                                None, {})
    assert "frontend_window" not in settings and settings["frontend"] == "kaldi"
