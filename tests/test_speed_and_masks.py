"""Speed perturbation as new speakers, and SpecAugment-style masks of training crops: values and reproducibility."""
import numpy as np
import pytest
import soundfile
import torch

from audio.effects import change_speed, spectral_masks
from audio.reading import crop_length
from DatasetLoader import SPEED_FACTORS, expand_speakers, train_dataset_loader

RATE = 16000
MAX_FRAMES = 100


def dominant_frequency(audio: np.ndarray) -> float:
    """The frequency (Hz) of the strongest spectral peak of a 1-D signal."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * RATE / len(audio))


@pytest.fixture
def tones(tmp_path):
    """Two speakers of pure tones (500 Hz and 800 Hz), two 3 s utterances each, and their train list."""
    lines = []
    for speaker, frequency in (("spkA", 500.0), ("spkB", 800.0)):
        for utterance in range(2):
            relative = f"{speaker}/v/{utterance}.wav"
            (tmp_path / "wav" / relative).parent.mkdir(parents=True, exist_ok=True)
            tone = 0.3 * np.sin(2 * np.pi * frequency * np.arange(3 * RATE) / RATE)
            soundfile.write(tmp_path / "wav" / relative, tone.astype(np.float32), RATE)
            lines.append(f"{speaker} {relative}\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    return tmp_path


def dataset(root, **kwargs):
    return train_dataset_loader(str(root / "list.txt"), augment=False, musan_path="", rir_path="",
                                max_frames=MAX_FRAMES, train_path=str(root / "wav"), seed=3, **kwargs)


def test_speakers_expand_with_the_original_labels_first():
    paths, labels, speeds, names = expand_speakers(["a1", "b1", "a2"], ["a", "b", "a"], (1.0, 0.9, 1.1))
    assert names == ["a", "b", "a@0.9", "b@0.9", "a@1.1", "b@1.1"]
    assert labels == [0, 1, 0, 2, 3, 2, 4, 5, 4] and paths == ["a1", "b1", "a2"] * 3
    assert speeds == [1.0] * 3 + [0.9] * 3 + [1.1] * 3


def test_speed_perturbed_items_are_new_speakers_at_another_pitch(tones):
    plain, perturbed = dataset(tones), dataset(tones, speed_perturb=True)
    assert len(perturbed) == 3 * len(plain) and len(perturbed.speakers) == 3 * len(plain.speakers) == 6
    perturbed.set_epoch(1)
    for index in range(len(perturbed)):
        audio, label = perturbed[[index]]
        assert audio.shape == (1, crop_length(MAX_FRAMES))
        base = 500.0 if perturbed.speakers[label].startswith("spkA") else 800.0
        assert dominant_frequency(audio[0].numpy()) == pytest.approx(base * perturbed.data_speed[index], rel=0.01)
    assert perturbed[[5]][0].equal(perturbed[[5]][0]), "the same item, epoch and seed give the same crop"


def test_change_speed_keeps_the_length():
    audio = np.random.default_rng(0).standard_normal((1, 30000)).astype(np.float32)
    for speed in SPEED_FACTORS:
        assert change_speed(audio, speed, 25000).shape == (1, 25000)


def test_spectral_masks_zero_bands_and_are_reproducible(tones):
    noise = np.random.default_rng(1).standard_normal((1, crop_length(MAX_FRAMES))).astype(np.float32)
    np.testing.assert_allclose(spectral_masks(noise, np.random.default_rng(2), masks=0), noise, atol=1e-5)
    masked = spectral_masks(noise, np.random.default_rng(2), masks=1, max_band=0.2, max_frames=0)
    spectrum, original = np.abs(np.fft.rfft(masked[0])), np.abs(np.fft.rfft(noise[0]))
    bands = np.array_split(np.arange(len(spectrum)), 40)
    ratios = [spectrum[band].mean() / original[band].mean() for band in bands]
    assert min(ratios) < 0.2 and np.median(ratios) > 0.8, "one frequency band is removed, the rest is kept"
    masked_items = dataset(tones, spec_augment=True)
    masked_items.set_epoch(1)
    plain_items = dataset(tones)
    plain_items.set_epoch(1)
    first, again, plain = masked_items[[0]][0], masked_items[[0]][0], plain_items[[0]][0]
    assert torch.equal(first, again) and not torch.allclose(first, plain, atol=1e-3)
