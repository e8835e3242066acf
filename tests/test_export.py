"""Deployment: inference packages, ONNX / TorchScript export with its parity check, torch-free ONNX embedding."""
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torchaudio
from conftest import PROJECT_ROOT

import embedSpeaker
import exportModel
from deployment.export import (
    MIN_COSINE,
    OPSET,
    ExportError,
    Parity,
    export_model,
    measure_parity,
    onnx_runner,
    parity_clips,
)
from deployment.onnx_embedder import OnnxEmbedder
from deployment.spectrogram import replace_spectrograms
from models.FrontEnd import mel_filterbank
from settings.plugins import available_plugins
from SpeakerNet import SpeakerNet, ssl_back_ends

integration = pytest.mark.integration

MODEL_FLAGS = ["--model", "ResNetSE34L", "--trainfunc", "angleproto", "--nOut", "32", "--log_input", "true",
               "--eval_frames", "50", "--num_eval", "3"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A bare state_dict, as the original saves it (its settings come from flags)."""
    torch.manual_seed(3)
    net = SpeakerNet(model="ResNetSE34L", trainfunc="angleproto", nPerSpeaker=2, nOut=32, log_input=True,
                     encoder_type="SAP", n_mels=40)
    path = tmp_path_factory.mktemp("ckpt") / "model000000001.model"
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory):
    """The checkpoint exported as an inference package."""
    path = tmp_path_factory.mktemp("package") / "lite.pkg"
    assert exportModel.main(["--initial_model", checkpoint, "--format", "package", "--output", str(path),
                             *MODEL_FLAGS]) == 0
    return str(path)


def fails_with(main, argv, message, capsys):
    """The tool stops with exit status 1 and one 'Error: ...' line matching `message`."""
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert re.search(message, error) and error.startswith("Error: ") and error.count("\n") == 1, error


def test_package_holds_only_the_embedding_model(package, checkpoint):
    content = torch.load(package, weights_only=True)
    assert set(content) == {"format", "args", "weights", "sha256"}
    assert all(name.startswith("__S__.") for name in content["weights"])
    assert content["args"]["model"] == "ResNetSE34L" and content["args"]["nOut"] == 32
    original = torch.load(checkpoint, weights_only=True)
    for name, tensor in content["weights"].items():
        torch.testing.assert_close(tensor, original[name], rtol=0, atol=0)


def test_package_embeds_like_the_checkpoint_without_flags(package, checkpoint, tiny_corpus, tmp_path):
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    from_checkpoint, from_package = tmp_path / "checkpoint.npy", tmp_path / "package.npy"
    assert embedSpeaker.main(["embed", wav, "--output", str(from_checkpoint), "--initial_model", checkpoint,
                              *MODEL_FLAGS]) == 0
    assert embedSpeaker.main(["embed", wav, "--output", str(from_package), "--initial_model", package]) == 0
    np.testing.assert_allclose(np.load(from_package), np.load(from_checkpoint), rtol=1e-5, atol=1e-6)
    assert np.load(from_package).shape == (3, 32)


def test_altered_package_is_refused(package, tiny_corpus, tmp_path, capsys):
    content = torch.load(package, weights_only=True)
    name = next(iter(content["weights"]))
    content["weights"][name] = content["weights"][name] + 1e-3
    altered = tmp_path / "altered.pkg"
    torch.save(content, altered)
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    fails_with(embedSpeaker.main, ["verify", wav, wav, "--initial_model", str(altered)],
               "do not match the package's sha256", capsys)
    content["format"] = "voxceleb_trainer_next-package/9"
    torch.save(content, altered)
    fails_with(embedSpeaker.main, ["verify", wav, wav, "--initial_model", str(altered)],
               "is a package of format 'voxceleb_trainer_next-package/9'; this version reads", capsys)


def test_bad_export_input(checkpoint, tmp_path, capsys):
    output = str(tmp_path / "model.onnx")
    fails_with(exportModel.main, ["--initial_model", str(tmp_path / "none.model"), "--format", "onnx", "--output",
                                  output, *MODEL_FLAGS], "Checkpoint not found", capsys)
    fails_with(exportModel.main, ["--initial_model", checkpoint, "--format", "tflite", "--output", output,
                                  *MODEL_FLAGS], "invalid choice: 'tflite'", capsys)
    fails_with(exportModel.main, ["--initial_model", checkpoint, "--format", "package", "--output",
                                  str(tmp_path / "missing" / "x.pkg"), *MODEL_FLAGS], "does not exist", capsys)
    fails_with(exportModel.main, ["--initial_model", checkpoint, "--format", "package", "--output", output],
               "give --model and --trainfunc", capsys)


@integration
def test_eval_of_a_package_needs_no_model_flags(package, checkpoint, tiny_corpus, tmp_path):
    def scores(initial_model, flags):
        score_file = tmp_path / f"scores_{len(flags)}.txt"
        subprocess.run([sys.executable, "trainSpeakerNet.py", "--eval", "--initial_model", initial_model, *flags,
                        "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"],
                        "--score_file", str(score_file), "--save_path", str(tmp_path / "exp"),
                        "--nDataLoaderThread", "0", "--device", "cpu"], cwd=PROJECT_ROOT, check=True,
                       capture_output=True, text=True)
        return np.array([float(line.split()[0]) for line in score_file.read_text().splitlines()])

    np.testing.assert_allclose(scores(package, []), scores(checkpoint, MODEL_FLAGS), atol=2e-5)


# ---------------------------------------------------------------- ONNX and TorchScript export

@pytest.mark.parametrize("front_end", [
    mel_filterbank(40), mel_filterbank(80, torch.hann_window, f_max=8000),
    torchaudio.transforms.Spectrogram(n_fft=512, win_length=400, hop_length=160, window_fn=torch.hann_window,
                                      center=False, power=1.0),
], ids=["mel-hamming", "mel-hann", "magnitude-uncentred"])
def test_dft_front_end_matches_torchaudio(front_end):
    holder = torch.nn.Sequential(front_end)
    exportable = torch.nn.Sequential(front_end)
    assert replace_spectrograms(exportable) == 1 and not isinstance(exportable[0], type(front_end))
    audio = 0.1 * torch.randn(2, 16_123, generator=torch.Generator().manual_seed(5))
    expected, got = holder(audio), exportable(audio)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5 * expected.abs().max().item())


SHORT_CLIPS = (1.0, 1.3, 1.1)  # seconds: tracing example, then the two checked clips
# model -> settings that keep it small where the model allows (nOut 32 for all)
EXPORT_SETTINGS = {
    "ResNetSE34L": {}, "ResNetSE34": {}, "ResNetSE34V2": {}, "Res2NetSE34": {}, "VGGVox": {}, "VGGVox40": {},
    "RawNet3": {"encoder_type": "ECA"}, "ECAPA_TDNN": {"channels": 16, "n_mels": 80}, "CAMPPlus": {"n_mels": 80},
    "ResNet34": {"n_mels": 80}, "ResNet152": {"n_mels": 80}, "ResNet221": {"n_mels": 80}, "ResNet293": {"n_mels": 80},
    "SimAM_ResNet34": {"n_mels": 80, "m_channels": 8}, "SimAM_ResNet100": {"n_mels": 80, "m_channels": 8},
    "ERes2NetV2": {"n_mels": 80, "m_channels": 8},
    **{f"ReDimNetB{size}": {"n_mels": 60 if size == 0 else 72} for size in range(7)},
    **{f"ReDimNet2B{size}": {"n_mels": 72} for size in range(7)},
}
FAST = {("ResNetSE34L", "onnx")}  # the unit tier; the rest is integration


def speaker_net(model: str) -> SpeakerNet:
    """A freshly initialised SpeakerNet of `model` with its small test settings."""
    torch.manual_seed(0)
    settings = {"encoder_type": "SAP", "n_mels": 40, **EXPORT_SETTINGS[model]}
    return SpeakerNet(model=model, trainfunc="angleproto", nOut=32, log_input=True, **settings).eval()


def export_cases() -> list:
    """Every model in models/ in both formats (those built on an ssl encoder folder: tests/test_ssl_frontends.py)."""
    models = [model for model in available_plugins("models") if model not in ssl_back_ends()]
    assert sorted(models) == sorted(EXPORT_SETTINGS), "a new model needs its test settings in EXPORT_SETTINGS"
    return [pytest.param(model, kind, id=f"{model}-{kind}", marks=() if (model, kind) in FAST else integration)
            for model in models for kind in ("onnx", "torchscript")]


@pytest.mark.parametrize("model, kind", export_cases())
def test_export_matches_pytorch(model, kind, tmp_path):
    output = tmp_path / f"model.{kind}"
    parity = export_model(speaker_net(model), {"model": model}, kind, str(output), seconds=SHORT_CLIPS)
    assert output.is_file() and parity.clips == 4
    assert parity.min_cosine >= MIN_COSINE and parity.max_abs_diff < 1e-3
    if kind == "onnx":
        graph = onnx.load(str(output))
        assert [dim.dim_param for dim in graph.graph.input[0].type.tensor_type.shape.dim] == ["batch", "samples"]
        assert graph.opset_import[0].version == OPSET
        settings = json.loads({prop.key: prop.value for prop in graph.metadata_props}["speakernet"])
        assert settings["model"] == model and settings["test_normalize"] is True


FRONT_END_CASES = {  # the fbank models' other front ends; dither must be off in the exported graph
    "kaldi": {"frontend": "kaldi", "frontend_window": "hamming", "waveform_scale": 32768.0, "dither": 1.0},
    "speechbrain": {"frontend": "speechbrain"},
}


@pytest.mark.parametrize("kind", ["onnx", pytest.param("torchscript", marks=integration)])
@pytest.mark.parametrize("front_end", FRONT_END_CASES)
def test_export_of_other_front_ends_matches_pytorch(front_end, kind, tmp_path):
    torch.manual_seed(0)
    net = SpeakerNet(model="ECAPA_TDNN", trainfunc="angleproto", nOut=32, channels=16, n_mels=80,
                     **FRONT_END_CASES[front_end]).eval()
    output = tmp_path / f"model.{kind}"
    parity = export_model(net, {"model": "ECAPA_TDNN", **FRONT_END_CASES[front_end]}, kind, str(output),
                          seconds=SHORT_CLIPS)
    assert parity.min_cosine >= MIN_COSINE and parity.max_abs_diff < 1e-3
    if kind == "onnx":
        ops = {node.op_type for node in onnx.load(str(output)).graph.node}
        assert not ops & {"DFT", "STFT", "RandomNormal", "RandomNormalLike"}, ops


@integration
def test_parity_failure_is_detected(tmp_path, capsys, monkeypatch, checkpoint):
    net = speaker_net("ResNetSE34L")
    output = tmp_path / "model.onnx"
    export_model(net, {"model": "ResNetSE34L"}, "onnx", str(output), seconds=SHORT_CLIPS)
    altered = speaker_net("ResNetSE34L")
    with torch.no_grad():
        altered.__S__.fc.weight[0, 0] += 0.5
    _, batches = parity_clips(SHORT_CLIPS)
    assert measure_parity(altered.__S__, onnx_runner(output), batches).min_cosine < MIN_COSINE
    with pytest.raises(ExportError, match=r"differs from PyTorch: min cosine 1\.0+ .*needs cosine >= 1\.5"):
        export_model(net, {"model": "ResNetSE34L"}, "torchscript", str(tmp_path / "strict.pt"), min_cosine=1.5,
                     seconds=SHORT_CLIPS)
    assert not (tmp_path / "strict.pt").exists() and not list(tmp_path.glob(".*partial"))
    monkeypatch.setattr("deployment.export.measure_parity", lambda *args: Parity(0.99, 0.25, 4))
    fails_with(exportModel.main, ["--initial_model", checkpoint, "--format", "onnx", "--output",
                                  str(tmp_path / "cli.onnx"), *MODEL_FLAGS],
               r"min cosine 0\.99.*max \|diff\| 2\.50e-01", capsys)
    assert not (tmp_path / "cli.onnx").exists()


# ---------------------------------------------------------------- embedding with the ONNX model

@pytest.fixture(scope="module")
def onnx_model(package, tmp_path_factory):
    """The checkpoint's package exported to ONNX with the command line (no model flags)."""
    path = tmp_path_factory.mktemp("onnx") / "lite.onnx"
    assert exportModel.main(["--initial_model", package, "--format", "onnx", "--output", str(path)]) == 0
    return str(path)


@integration
def test_onnx_embed_and_verify_match_the_torch_path(onnx_model, checkpoint, tiny_corpus, tmp_path, capsys):
    test_path = tiny_corpus["test_path"]
    outputs = {}
    for flag, model, flags in (("--onnx", onnx_model, []), ("--initial_model", checkpoint, MODEL_FLAGS)):
        outputs[flag] = tmp_path / f"{flag[2:]}.npz"
        assert embedSpeaker.main(["embed", test_path, "--output", str(outputs[flag]), flag, model, *flags]) == 0
    from_onnx, from_torch = np.load(outputs["--onnx"]), np.load(outputs["--initial_model"])
    assert sorted(from_onnx.keys()) == sorted(from_torch.keys()) and len(from_onnx.keys()) == 6
    for name in from_torch.keys():
        assert from_onnx[name].shape == (3, 32)
        np.testing.assert_allclose(from_onnx[name], from_torch[name], rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    pair = [f"{test_path}/id00000/sess0/00000.wav", f"{test_path}/id00001/sess1/00001.wav"]
    for scoring in ("original", "cosine"):
        embedSpeaker.main(["verify", *pair, "--onnx", onnx_model, "--scoring", scoring])
        embedSpeaker.main(["verify", *pair, "--initial_model", checkpoint, *MODEL_FLAGS, "--scoring", scoring])
        onnx_score, torch_score = (float(line.split()[1]) for line in capsys.readouterr().out.splitlines()
                                   if line.startswith("score "))
        assert onnx_score == pytest.approx(torch_score, abs=1e-4)


@integration
def test_onnx_embedding_runs_without_torch(onnx_model, tiny_corpus, tmp_path):
    """With torch made unimportable, the ONNX embedder still embeds and scores, and never imports torch."""
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is blocked in this test')\n")
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    script = ("import json, sys\n"
              "from deployment.onnx_embedder import OnnxEmbedder\n"
              f"embedder = OnnxEmbedder({onnx_model!r})\n"
              f"crops = embedder.embed_files([{wav!r}])[{wav!r}]\n"
              f"score = embedder.score({wav!r}, {wav!r})\n"
              "print(json.dumps({'crops': crops.tolist(), 'score': score, 'torch': 'torch' in sys.modules}))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{blocker}:{PROJECT_ROOT}"})
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.splitlines()[-1])
    embedder = OnnxEmbedder(onnx_model)
    assert output["torch"] is False
    np.testing.assert_allclose(output["crops"], embedder.embed_files([wav])[wav], rtol=1e-5, atol=1e-6)
    assert output["score"] == pytest.approx(embedder.score(wav, wav), abs=1e-6)


def test_bad_onnx_input(onnx_model, checkpoint, tiny_corpus, tmp_path, capsys):
    wav = f"{tiny_corpus['test_path']}/id00000/sess0/00000.wav"
    fails_with(embedSpeaker.main, ["verify", wav, wav, "--onnx", str(tmp_path / "none.onnx")],
               "ONNX model not found", capsys)
    fails_with(embedSpeaker.main, ["verify", wav, wav, "--onnx", checkpoint], "Cannot load ONNX model", capsys)
    fails_with(embedSpeaker.main, ["verify", wav, wav, "--onnx", onnx_model, "--nOut", "64"],
               "--nOut does not apply to an ONNX model", capsys)
    fails_with(embedSpeaker.main, ["verify", wav, wav, "--onnx", onnx_model, "--config", "run.yaml"],
               "--config does not apply to an ONNX model", capsys)
    fails_with(embedSpeaker.main, ["verify", wav, wav, "--onnx", onnx_model, "--initial_model", checkpoint],
               "not allowed with argument", capsys)
