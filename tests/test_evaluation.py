"""evaluation: trial lists, batched embedding extraction and vectorised scoring on generated audio."""

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

import DatasetLoader
import evaluation
from evaluation.embeddings_cache import load_embeddings_cache, model_fingerprint, save_embeddings_cache
from evaluation.extraction import embed_paths
from evaluation.trials import check_files_exist, read_trials
from settings.sections import trial_list_paths


class SpectralEmbedder(torch.nn.Module):
    """A small real network: log power spectrum of 25 ms frames, averaged, then a fixed projection."""

    def __init__(self, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.projection = torch.nn.Linear(201, dim)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(waveform, n_fft=400, hop_length=160, window=torch.hann_window(400),
                              return_complex=True).abs().pow(2)
        return self.projection(torch.log(spectrum + 1e-6).mean(dim=-1))


def write_list(tmp_path, text, name="trials.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_read_trials_labelled_and_unlabelled(tmp_path):
    path = write_list(tmp_path, "1 a/1.wav b/2.wav\n0 a/1.wav c/3.wav\n\nc/3.wav b/2.wav\n")
    trials = read_trials(path)
    assert trials.labels.tolist() == [1, 0, -1]
    assert trials.enrol == ["a/1.wav", "a/1.wav", "c/3.wav"]
    assert trials.test == ["b/2.wav", "c/3.wav", "b/2.wav"]
    assert trials.files == ["a/1.wav", "b/2.wav", "c/3.wav"]
    assert trials.path == path


@pytest.mark.parametrize("text, message", [
    ("1 a b\n1 a b c\n", r"line 2: expected .* got 4 fields"),
    ("1 a b\nonly\n", r"line 2: .* got 1 fields"),
    ("1 a b\n2 a c\n", r"line 2: the label must be 0 .* or 1 .*got '2'"),
    ("1 a b\n-1 a c\n", r"line 2: the label must be"),
    ("\n\n", "has no trials"),
    ("1 a b\n0 a b\n", "lines 1 and 2: the trial a b appears with labels 1 and 0"),
])
def test_read_trials_errors_name_file_and_line(tmp_path, text, message):
    path = write_list(tmp_path, text)
    with pytest.raises(ValueError, match=message) as error:
        read_trials(path)
    assert path in str(error.value)


def test_read_trials_missing_file_and_duplicates(tmp_path):
    with pytest.raises(FileNotFoundError, match="Cannot read trial list .*nope.txt"):
        read_trials(str(tmp_path / "nope.txt"))
    path = write_list(tmp_path, "1 a b\n0 a c\n1 a b\n")
    with pytest.warns(UserWarning, match="1 duplicate trial lines .first at line 3"):
        trials = read_trials(path)
    assert len(trials.labels) == 3


def test_check_files_exist_lists_missing_before_work(tiny_corpus):
    trials = read_trials(tiny_corpus["test_list"])
    check_files_exist(trials.files, tiny_corpus["test_path"])
    with pytest.raises(FileNotFoundError, match=r"(?s)2 of \d+ files .*ghost/1.wav"):
        check_files_exist(trials.files + ["ghost/1.wav", "ghost/2.wav"], tiny_corpus["test_path"])


def per_file_embeddings(model, files, test_path, eval_frames, num_eval):
    """The original's path: one file per forward pass."""
    with torch.no_grad():
        return {name: model(torch.from_numpy(DatasetLoader.loadWAV(f"{test_path}/{name}", eval_frames,
                                                                   num_eval=num_eval)).float())
                for name in files}


@pytest.mark.parametrize("eval_frames, num_eval", [(50, 4), (0, 10)])
def test_batched_extraction_matches_one_file_per_forward(tiny_corpus, eval_frames, num_eval):
    model = SpectralEmbedder()
    files = read_trials(tiny_corpus["test_list"]).files
    embeddings = evaluation.extract_embeddings(model, files, tiny_corpus["test_path"], eval_frames, num_eval, 0,
                                               "cpu", files_per_batch=4)
    reference = per_file_embeddings(model, files, tiny_corpus["test_path"], eval_frames, num_eval)
    assert sorted(embeddings) == sorted(files)
    for name in files:
        assert embeddings[name].dtype == torch.float32
        assert embeddings[name].shape == (num_eval if eval_frames else 1, 16)
        torch.testing.assert_close(embeddings[name], reference[name], rtol=1e-4, atol=1e-4)


def test_whole_utterances_of_different_lengths_with_workers(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [8000, 12000, 8000, 9600, 12000]
    files = []
    for i, length in enumerate(lengths):
        soundfile.write(tmp_path / f"{i}.wav", rng.uniform(-0.3, 0.3, length).astype(np.float32), 16000)
        files.append(f"{i}.wav")
    model = SpectralEmbedder()
    embeddings = evaluation.extract_embeddings(model, files, str(tmp_path), 0, 10, 2, "cpu", files_per_batch=3)
    reference = per_file_embeddings(model, files, str(tmp_path), 0, 10)
    for name in files:
        torch.testing.assert_close(embeddings[name], reference[name], rtol=1e-4, atol=1e-4)


def test_model_with_wrong_output_rows_is_an_error(tiny_corpus):
    files = read_trials(tiny_corpus["test_list"]).files
    with pytest.raises(RuntimeError, match="must map"):
        evaluation.extract_embeddings(lambda audio: torch.zeros(1, 4), files, tiny_corpus["test_path"], 50, 3, 0,
                                      "cpu")


def random_trials(n_files=40, n_trials=300, crops=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    files = [f"f{i}.wav" for i in range(n_files)]
    embeddings = {name: torch.randn(crops, dim, generator=torch.Generator().manual_seed(i))
                  for i, name in enumerate(files)}
    enrol = [files[i] for i in rng.integers(0, n_files, n_trials)]
    test = [files[i] for i in rng.integers(0, n_files, n_trials)]
    trials = evaluation.Trials(rng.integers(0, 2, n_trials), enrol, test, sorted(set(enrol) | set(test)), "mem")
    return trials, embeddings


@pytest.mark.parametrize("normalize", [True, False])
def test_original_scoring_matches_loop(normalize):
    trials, embeddings = random_trials()
    scores = evaluation.score_trials(trials, embeddings, normalize)
    for k in range(len(scores)):
        a, b = embeddings[trials.enrol[k]], embeddings[trials.test[k]]
        if normalize:
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        distances = torch.tensor([[torch.sqrt(((x - y) ** 2).sum()) for y in b] for x in a])
        assert scores[k] == pytest.approx(-distances.mean().item(), rel=1e-5)


def test_cosine_scoring_matches_loop():
    trials, embeddings = random_trials(seed=1)
    scores = evaluation.score_trials(trials, embeddings, False, mode="cosine")
    for k in range(len(scores)):
        a = F.normalize(embeddings[trials.enrol[k]], dim=1).mean(0)
        b = F.normalize(embeddings[trials.test[k]], dim=1).mean(0)
        assert scores[k] == pytest.approx((a @ b / a.norm() / b.norm()).item(), abs=1e-6)


def test_single_crop_and_mixed_crop_counts():
    trials, embeddings = random_trials(crops=1, dim=10)
    scores = evaluation.score_trials(trials, embeddings, True)
    k = 0
    a, b = F.normalize(embeddings[trials.enrol[k]], dim=1), F.normalize(embeddings[trials.test[k]], dim=1)
    assert scores[k] == pytest.approx(-(a - b).norm().item(), rel=1e-5)
    embeddings["f0.wav"] = torch.randn(3, 10)
    scores = evaluation.score_trials(trials, embeddings, True)
    k = next(i for i, name in enumerate(trials.enrol) if name == "f0.wav")
    a, b = F.normalize(embeddings["f0.wav"], dim=1), F.normalize(embeddings[trials.test[k]], dim=1)
    assert scores[k] == pytest.approx(-torch.cdist(a, b).mean().item(), rel=1e-5)


def test_scoring_errors():
    trials, embeddings = random_trials()
    with pytest.raises(ValueError, match="Unknown scoring mode 'plda'"):
        evaluation.score_trials(trials, embeddings, True, mode="plda")
    del embeddings[trials.files[0]]
    with pytest.raises(KeyError, match="No embedding for 1 files"):
        evaluation.score_trials(trials, embeddings, True)


def test_embeddings_cache_round_trip_and_invalidation(tmp_path, capsys):
    path = str(tmp_path / "cache.pt")
    settings = {"weights": "abc", "eval_frames": 300, "num_eval": 10, "autocast": "None"}
    stored = {"a/1.wav": torch.randn(10, 4), "b/2.wav": torch.randn(10, 4)}
    save_embeddings_cache(path, settings, stored)
    loaded = load_embeddings_cache(path, settings)
    assert sorted(loaded) == sorted(stored) and torch.equal(loaded["a/1.wav"], stored["a/1.wav"])
    assert load_embeddings_cache(path, dict(settings, weights="other")) == {}
    assert "other weights or crop settings" in capsys.readouterr().out
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    assert load_embeddings_cache(str(tmp_path / "broken.pt"), settings) == {}
    assert "cannot be read" in capsys.readouterr().out
    assert load_embeddings_cache(str(tmp_path / "absent.pt"), settings) == {}


def test_trial_list_paths_accepts_commas_and_yaml_lists():
    assert trial_list_paths("a.txt") == ["a.txt"]
    assert trial_list_paths("a.txt, b.txt,") == ["a.txt", "b.txt"]
    assert trial_list_paths(["a.txt", "b.txt"]) == ["a.txt", "b.txt"]


def test_files_per_forward_pass_defaults():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert evaluation.default_files_per_batch(cpu, 400, 10) == 1  # 10 crops per file: one file per pass
    assert evaluation.default_files_per_batch(cpu, 200, 4) == 4
    assert evaluation.default_files_per_batch(cpu, 400, 32) == 1
    assert evaluation.default_files_per_batch(cpu, 0, 10) == 16  # whole utterances: one crop per file
    assert evaluation.default_files_per_batch(gpu, 400, 10) == 16


def test_cpu_placement_is_channels_last_and_keeps_embeddings_and_checkpoints(tmp_path):
    from runtime.device import place_on
    from SpeakerNet import SpeakerNet

    torch.manual_seed(0)
    settings = dict(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=32,
                    encoder_type="SAP", n_mels=40, log_input=True)
    plain = SpeakerNet(**settings).eval()
    placed = place_on(SpeakerNet(**settings), torch.device("cpu")).eval()
    placed.load_state_dict(plain.state_dict())
    conv = placed.__S__.layer1[0].conv1.weight  # 16 input channels: the two layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    audio = torch.randn(3, 16240, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(placed(audio), plain(audio), rtol=1e-5, atol=1e-5)
        torch.save(placed.state_dict(), tmp_path / "placed.model")
        fresh = SpeakerNet(**settings).eval()
        fresh.load_state_dict(torch.load(tmp_path / "placed.model", weights_only=True))
        torch.testing.assert_close(fresh(audio), plain(audio), rtol=1e-5, atol=1e-5)


def test_embeddings_cache_key_covers_model_options(tiny_corpus, tmp_path, capsys):
    """Two models with the same weights but another --log_input give other embeddings: no stale reuse."""
    from settings.sections import EvaluationSettings
    from SpeakerNet import SpeakerNet

    def net(log_input: bool) -> SpeakerNet:
        torch.manual_seed(0)
        return SpeakerNet(model="ResNetSE34L", optimizer="adam", trainfunc="angleproto", nPerSpeaker=2, nOut=16,
                          n_mels=40, log_input=log_input, encoder_type="SAP").eval()

    args = EvaluationSettings.from_flags(dict(eval_frames=50, num_eval=2, nDataLoaderThread=0,
                                              embeddings_cache=str(tmp_path / "cache.pt")))
    roots = {tiny_corpus["test_path"]: ["id00000/sess0/00000.wav"]}
    with_log, without_log = net(True), net(False)
    assert model_fingerprint(with_log) == model_fingerprint(without_log)
    first = embed_paths(with_log, roots, args, torch.device("cpu"), None)
    again = embed_paths(without_log, roots, args, torch.device("cpu"), None)
    assert "other weights or crop settings" in capsys.readouterr().out
    (name,) = first
    assert not torch.allclose(first[name], again[name], atol=1e-3)
    assert embed_paths(without_log, roots, args, torch.device("cpu"), None)[name].equal(again[name])
    assert "Reusing 1 embeddings" in capsys.readouterr().out
