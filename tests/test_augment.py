"""MUSAN / RIR augmentation: file index, draws, SNR on the output, RIR convolution, reproducibility."""
import collections
import copy

import numpy as np
import pytest
import soundfile
import torch
from scipy import signal

from audio import augmentation, effects
from audio.reading import crop_length
from DatasetLoader import AugmentWAV, train_dataset_loader

MAX_FRAMES = 100
MAX_AUDIO = crop_length(MAX_FRAMES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Split MUSAN (`<category>/<subset>/<stem>/<NNNNN>.wav`) and RIRs (`<room_type>/<Room>/<file>.wav`)."""
    root = tmp_path_factory.mktemp("augment")
    rng = np.random.default_rng(0)
    for category, count in (("noise", 3), ("speech", 8), ("music", 2)):
        for number in range(count):
            folder = root / "musan_split" / category / "subset" / f"{category}-{number:04d}"
            folder.mkdir(parents=True)
            for start in ("00000", "00003"):
                noise = rng.uniform(-0.3, 0.3, 80000) * rng.uniform(0.5, 3)  # well above the +1e-4 power floor
                soundfile.write(folder / f"{start}.wav", noise.astype(np.float32), 16000, subtype="FLOAT")
    for room_type in ("smallroom", "mediumroom"):
        folder = root / "simulated_rirs" / room_type / "Room001"
        folder.mkdir(parents=True)
        for number in range(2):
            decay = np.exp(-np.arange(3000) / 400) * rng.standard_normal(3000)
            soundfile.write(folder / f"Room001-{number:05d}.wav", decay.astype(np.float32), 16000, subtype="FLOAT")
    return {"musan": str(root / "musan_split"), "rir": str(root / "simulated_rirs"), "root": root}


@pytest.fixture(scope="module")
def augmenter(folders):
    return AugmentWAV(folders["musan"], folders["rir"], MAX_FRAMES)


def clean_crop(seed=1):
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(np.arange(MAX_AUDIO) * 0.05) + rng.uniform(-0.1, 0.1, MAX_AUDIO)).astype(np.float32)[None]


def test_index_categories_and_built_once(folders):
    augmentation.musan_index.cache_clear()
    index = augmentation.musan_index(folders["musan"])
    assert {category: len(paths) for category, paths in index.items()} == {"noise": 6, "speech": 16, "music": 4}
    assert all("/speech/subset/" in path for path in index["speech"])
    AugmentWAV(folders["musan"], folders["rir"], MAX_FRAMES)
    assert augmentation.musan_index.cache_info().misses == 1
    assert len(augmentation.rir_index(folders["rir"])) == 4


def test_missing_folders_say_run_dataprep(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no_musan.*dataprep\.py --save_path data --augment"):
        AugmentWAV(str(tmp_path / "no_musan"), folders["rir"], MAX_FRAMES)
    with pytest.raises(FileNotFoundError, match=r"no_rir.*dataprep\.py --save_path data --augment"):
        AugmentWAV(folders["musan"], str(tmp_path / "no_rir"), MAX_FRAMES)


def test_nothing_globbed_when_augment_is_off(tmp_path):
    soundfile.write(tmp_path / "a.wav", np.zeros(20000, dtype=np.float32), 16000)
    (tmp_path / "list.txt").write_text("s a.wav\n")
    before = augmentation.musan_index.cache_info(), augmentation.rir_index.cache_info()
    train_dataset_loader(str(tmp_path / "list.txt"), False, str(tmp_path / "none"), str(tmp_path / "none"),
                         MAX_FRAMES, str(tmp_path))
    assert (augmentation.musan_index.cache_info(), augmentation.rir_index.cache_info()) == before


def test_draws_follow_categories():
    files = tuple(f"f{i}" for i in range(10))
    rng = np.random.default_rng(0)
    for category in ("noise", "speech", "music"):
        counts = set()
        for _ in range(200):
            draws = augmentation.draw_noises(files, category, rng)
            names = [name for name, _ in draws]
            assert len(names) == len(set(names))
            low, high = augmentation.NOISE_SNR[category]
            assert all(low <= snr <= high for _, snr in draws)
            counts.add(len(draws))
        assert counts == ({1} if category != "speech" else {3, 4, 5, 6, 7})
    kinds = collections.Counter(augmentation.draw_augment_type(rng) for _ in range(5000))
    assert set(kinds) == set(augmentation.AUGMENT_TYPES)
    assert all(850 < count < 1150 for count in kinds.values())


def measured_snr(clean, mixed):
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((mixed - clean).astype(np.float64) ** 2))


@pytest.mark.parametrize("category", ["noise", "music", "speech"])
def test_snr_on_output_matches_draw(augmenter, category):
    clean = clean_crop()
    for seed in range(5):
        rng = np.random.default_rng(seed)
        draws = augmentation.draw_noises(augmenter.noise_files[category], category, copy.deepcopy(rng))
        mixed = augmenter.additive_noise(category, clean, rng)
        assert mixed.shape == clean.shape
        # independent noises add in power: the combined SNR of k noises at s_i dB
        expected = -10 * np.log10(sum(10 ** (-snr / 10) for _, snr in draws))
        assert abs(measured_snr(clean, mixed) - expected) < 0.5


def test_mix_noises_exact_snr():
    clean = clean_crop()
    noise = np.random.default_rng(3).uniform(-1, 1, clean.shape).astype(np.float32)
    for snr in (0.0, 7.5, 20.0):
        assert abs(measured_snr(clean, effects.mix_noises(clean, [noise], [snr])) - snr) < 0.05


def test_reverberation_length_and_values(augmenter):
    clean = clean_crop()
    delayed = effects.convolve_rir(clean, np.array([0.0, 0.0, 2.0]))  # unit energy: a 2-sample delay
    assert delayed.shape == (1, MAX_AUDIO)
    np.testing.assert_allclose(delayed[0], np.concatenate([[0, 0], clean[0, :-2]]), atol=1e-6)
    rir = np.exp(-np.arange(2000) / 300) * np.random.default_rng(4).standard_normal(2000)
    expected = signal.convolve(clean[0].astype(np.float64), rir / np.sqrt(np.sum(rir ** 2)), method="direct")
    np.testing.assert_allclose(effects.convolve_rir(clean, rir)[0], expected[:MAX_AUDIO], atol=1e-5)
    reverberant = augmenter.reverberate(clean)  # the original's call, without a generator
    assert reverberant.shape == (1, MAX_AUDIO) and not np.allclose(reverberant, clean)


def test_augmented_items_reproducible(folders, tmp_path):
    rng = np.random.default_rng(5)
    lines = []
    for number in range(6):
        soundfile.write(tmp_path / f"{number}.wav", rng.uniform(-0.3, 0.3, 30000).astype(np.float32), 16000)
        lines.append(f"s{number % 2} {number}.wav\n")
    (tmp_path / "list.txt").write_text("".join(lines))

    def dataset(augment):
        return train_dataset_loader(str(tmp_path / "list.txt"), augment, folders["musan"], folders["rir"],
                                    MAX_FRAMES, str(tmp_path), seed=3)

    first, second, plain = dataset(True), dataset(True), dataset(False)
    items = [[index] for index in range(6)]
    for item in items:
        assert torch.equal(first[item][0], second[item][0])
    changed = sum(not torch.equal(first[item][0], plain[item][0]) for item in items)
    assert changed >= 2  # 4 of 5 augmentation types change the crop
