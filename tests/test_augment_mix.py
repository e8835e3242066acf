"""--augment_mix: the original mix is unchanged (values computed before the wespeaker mix existed) and never uses
large rooms; wespeaker's mix augments --augment_prob of the crops, half with reverb from any room, half with one
MUSAN recording at its category's SNR, and peak-normalises only what it augmented."""
import collections
import copy
import warnings

import numpy as np
import pytest
import soundfile
import yaml
from scipy import signal

import arguments
import DatasetLoader
from audio.augmentation import (
    WESPEAKER_SNR,
    AugmentWAV,
    WespeakerAugment,
    check_mix,
    make_augmenter,
    room_type,
)
from audio.reading import load_crops
from DatasetLoader import train_dataset_loader
from runtime.errors import ConfigError

MAX_FRAMES = 100
# Items of epoch 2 (seed 3) of the fixture's list with the original mix: (label, sum, sum of |x|, sample 5000), as
# computed by the code before --augment_mix existed, on the same folders without large rooms.
ORIGINAL_MIX = [
    (0, 11.118374, 2476.181095, 0.1439644),  # music
    (1, 22.784884, 2498.919727, -0.2272833),  # babble
    (0, -30.267553, 2225.648910, 0.2755953),  # reverb
    (1, -20.083560, 2524.554014, 0.1843235),  # noise
    (0, -32.524328, 2526.176875, -0.1704954),  # music
    (1, -35.682492, 2226.398979, -0.1323740),  # reverb
    (0, -5.708194, 2451.311936, 0.1090357),  # music
    (1, 7.163089, 2477.991334, 0.1425085),  # music
    (0, 0.471730, 2536.786213, -0.0202740),  # babble
    (1, -0.440843, 2238.254491, -0.0349990),  # reverb
]
# The same for every fifth item of --speed_perturb (mode expand, no augmentation).
EXPANDED_SPEEDS = {
    0: (0, 12.273361, 2432.776205, 0.1826268),
    5: (1, 25.895723, 2414.697278, -0.0609632),
    10: (2, 1.590362, 2306.062803, 0.0935656),
    15: (3, 45.243641, 2316.408000, -0.2317396),
    20: (4, 9.262179, 2207.227536, 0.1983588),
    25: (5, 39.302538, 2181.915760, -0.2299998),
}


def write(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples.astype(np.float32), 16000, subtype="FLOAT")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """MUSAN, RIRs of small and medium rooms, a train list (the values above were computed on these), then large
    rooms, and a MUSAN folder whose recordings have different numbers of chunks."""
    root = tmp_path_factory.mktemp("mix")
    rng = np.random.default_rng(0)
    for category, count in (("noise", 3), ("speech", 8), ("music", 2)):
        for number in range(count):
            for start in ("00000", "00003"):
                write(root / "musan" / category / "subset" / f"{category}-{number:04d}" / f"{start}.wav",
                      rng.uniform(-0.3, 0.3, 80000) * rng.uniform(0.5, 3))
    for room in ("smallroom", "mediumroom"):
        for number in range(2):
            write(root / "rirs" / room / "Room001" / f"Room001-{number:05d}.wav",
                  np.exp(-np.arange(3000) / 400) * rng.standard_normal(3000))
    lines = []
    for number in range(10):
        write(root / "wav" / f"{number}.wav", rng.uniform(-0.3, 0.3, 30000))
        lines.append(f"s{number % 2} {number}.wav\n")
    (root / "list.txt").write_text("".join(lines))
    other = np.random.default_rng(1)
    for number in range(2):
        write(root / "rirs" / "largeroom" / "Room001" / f"Room001-{number:05d}.wav",
              np.exp(-np.arange(12000) / 3000) * other.standard_normal(12000))
    for category, recordings, chunks in (("noise", 2, 6), ("speech", 6, 1), ("music", 4, 2)):
        for number in range(recordings):
            for chunk in range(chunks):
                write(root / "uneven" / category / "subset" / f"{category}-{number:04d}" / f"{3 * chunk:05d}.wav",
                      other.uniform(-0.2, 0.2, 8000))
    for room in ("smallroom", "mediumroom"):
        write(root / "old_rirs" / room / "Room001" / "Room001-00000.wav", np.array([1.0, 0.5, 0.25]))
    write(root / "large_rirs" / "largeroom" / "Room001" / "Room001-00000.wav", np.array([1.0, 0.5, 0.25]))
    return root


def summary(audio) -> tuple:
    values = np.asarray(audio, np.float64)
    return values.sum(), np.abs(values).sum(), values[0, 5000]


def assert_items(source, expected: dict) -> None:
    source.set_epoch(2)
    for index, (label, *values) in expected.items():
        audio, found = source[[index]]
        assert found == label
        assert summary(audio) == pytest.approx(values, rel=1e-5, abs=1e-3)


def test_original_mix_and_expanded_speeds_are_unchanged(folders):
    """Large rooms are in the RIR folder now; the original mix ignores them."""
    def dataset(**options):
        return train_dataset_loader(str(folders / "list.txt"), musan_path=str(folders / "musan"),
                                    rir_path=str(folders / "rirs"), max_frames=MAX_FRAMES,
                                    train_path=str(folders / "wav"), seed=3, **options)

    assert_items(dataset(augment=True), dict(enumerate(ORIGINAL_MIX)))
    assert_items(dataset(augment=False, speed_perturb=True), EXPANDED_SPEEDS)


def test_large_rooms_only_in_the_wespeaker_mix(folders):
    original = make_augmenter("original", str(folders / "musan"), str(folders / "rirs"), MAX_FRAMES, None)
    assert type(original) is AugmentWAV
    assert sorted(collections.Counter(map(room_type, original.rir_files))) == ["mediumroom", "smallroom"]
    wespeaker = make_augmenter("wespeaker", str(folders / "musan"), str(folders / "rirs"), MAX_FRAMES, None)
    assert isinstance(wespeaker, WespeakerAugment) and len(wespeaker.rir_files) == 6
    rng = np.random.default_rng(0)
    rooms = collections.Counter(room_type(drawn.path) for drawn in (wespeaker.draw(rng) for _ in range(6000))
                                if drawn.kind == "reverb")
    assert all(abs(count / sum(rooms.values()) - 1 / 3) < 0.03 for count in rooms.values()) and len(rooms) == 3


def test_wespeaker_draws_rates_categories_and_snrs(folders):
    mix = WespeakerAugment(str(folders / "uneven"), str(folders / "rirs"), MAX_FRAMES, prob=0.6)
    assert len(mix.recordings) == 12
    rng = np.random.default_rng(1)
    draws = [mix.draw(rng) for _ in range(20000)]
    kinds = collections.Counter(drawn.kind for drawn in draws)
    assert (kinds["reverb"] + kinds["noise"]) / 20000 == pytest.approx(0.6, abs=0.015)
    assert kinds["reverb"] / (kinds["reverb"] + kinds["noise"]) == pytest.approx(0.5, abs=0.015)
    noises = [drawn for drawn in draws if drawn.kind == "noise"]
    categories = collections.Counter(drawn.category for drawn in noises)
    for category, recordings in (("noise", 2), ("speech", 6), ("music", 4)):  # by recordings, not by chunks
        assert categories[category] / len(noises) == pytest.approx(recordings / 12, abs=0.02)
        snrs = [drawn.snr_db for drawn in noises if drawn.category == category]
        low, high = WESPEAKER_SNR[category]
        assert low <= min(snrs) < low + 0.5 and high - 0.5 < max(snrs) <= high
        assert all(f"/{category}/" in drawn.path for drawn in noises if drawn.category == category)
    chunks = collections.Counter(drawn.path.rsplit("/", 1)[1] for drawn in noises if drawn.category == "noise")
    assert len(chunks) == 6 and min(chunks.values()) > 0.6 * max(chunks.values())
    never = WespeakerAugment(str(folders / "uneven"), str(folders / "rirs"), MAX_FRAMES, prob=0.0)
    always = WespeakerAugment(str(folders / "uneven"), str(folders / "rirs"), MAX_FRAMES, prob=1.0)
    assert {never.draw(rng).kind for _ in range(500)} == {"none"}
    assert {always.draw(rng).kind for _ in range(500)} == {"reverb", "noise"}


def clean_crop(seed=1, level=0.3):
    rng = np.random.default_rng(seed)
    length = MAX_FRAMES * 160 + 240
    return (level * np.sin(np.arange(length) * 0.05) + rng.uniform(-0.05, 0.05, length)).astype(np.float32)[None]


def power_db(audio) -> float:
    return 10 * np.log10(np.mean(np.asarray(audio, np.float64) ** 2) + 1e-4)


def test_wespeaker_noise_gain_reverb_and_peak_normalisation(folders):
    mix = WespeakerAugment(str(folders / "uneven"), str(folders / "rirs"), MAX_FRAMES, prob=0.6)
    seen = collections.Counter()
    for seed in range(40):
        clean = clean_crop(seed, level=0.2 + 0.02 * seed)
        rng = np.random.default_rng(seed)
        ahead = copy.deepcopy(rng)
        drawn = mix.draw(ahead)
        out = mix.augment(clean, rng)
        seen[drawn.kind] += 1
        if drawn.kind == "none":
            assert out is clean, "a crop that is not augmented is not normalised either"
            continue
        if drawn.kind == "noise":
            noise = load_crops(drawn.path, MAX_FRAMES, False, 1, ahead.random()).astype(np.float64)
            gain = np.sqrt(10 ** ((power_db(clean) - power_db(noise) - drawn.snr_db) / 10))
            mixed = clean + gain * noise
            measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((gain * noise) ** 2))
            assert measured == pytest.approx(drawn.snr_db, abs=0.05), "the power floor of 1e-4 is small here"
        else:
            rir, _ = soundfile.read(drawn.path)
            mixed = signal.convolve(clean[0].astype(np.float64), rir / np.sqrt(np.sum(rir ** 2)))[None, :clean.size]
        np.testing.assert_allclose(out, mixed / (np.max(np.abs(mixed)) + 1e-4), atol=2e-5)
        assert np.max(np.abs(out)) == pytest.approx(1.0, abs=1e-3)
    assert set(seen) == {"none", "reverb", "noise"}


def test_wespeaker_mix_in_the_training_dataset(folders):
    def dataset(**options):
        return train_dataset_loader(str(folders / "list.txt"), musan_path=str(folders / "musan"),
                                    rir_path=str(folders / "rirs"), max_frames=MAX_FRAMES,
                                    train_path=str(folders / "wav"), seed=3, **options)

    plain, mixed = dataset(augment=False), dataset(augment=True, augment_mix="wespeaker", augment_prob=0.6)
    never = dataset(augment=True, augment_mix="wespeaker", augment_prob=0.0)
    augmented = 0
    for source in (plain, mixed, never):
        source.set_epoch(1)
    for index in range(10):
        crop, same, out = plain[[index]][0], never[[index]][0], mixed[[index]][0]
        assert np.array_equal(crop, same)
        if not np.array_equal(crop, out):
            augmented += 1
            assert float(out.abs().max()) == pytest.approx(1.0, abs=1e-3)
    assert 0 < augmented < 10


def test_flags_yaml_and_mistakes(folders, tmp_path):
    settings = arguments.parse_settings(["--augment_mix", "wespeaker", "--augment_prob", "0.25"])
    assert (settings.data.augment_mix, settings.data.augment_prob) == ("wespeaker", 0.25)
    assert (arguments.parse_settings([]).data.augment_mix, arguments.parse_settings([]).data.augment_prob) == \
        ("original", 0.6)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"augment_mix": "wespeaker", "augment_prob": 0.5}))
    data = arguments.parse_settings(["--config", str(tmp_path / "run.yaml")]).data
    assert (data.augment_mix, data.augment_prob) == ("wespeaker", 0.5)
    with pytest.raises(ConfigError, match="--augment_mix strong is unknown; use original or wespeaker"):
        check_mix("strong", 0.6)
    with pytest.raises(ConfigError, match=r"--augment_prob is a probability \(0 to 1\), got 1.5"):
        make_augmenter("wespeaker", str(folders / "musan"), str(folders / "rirs"), MAX_FRAMES, None, 1.5)
    old = str(folders / "old_rirs")
    with pytest.warns(UserWarning, match=f"--augment_mix wespeaker: no largeroom RIRs in {old}, so"):
        DatasetLoader.check_augmentation_data(str(folders / "musan"), old, "wespeaker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DatasetLoader.check_augmentation_data(str(folders / "musan"), old, "original")
        DatasetLoader.check_augmentation_data(str(folders / "musan"), str(folders / "rirs"), "wespeaker")
    with pytest.raises(FileNotFoundError, match="--augment_mix original needs RIRs of small or medium rooms"):
        AugmentWAV(str(folders / "musan"), str(folders / "large_rirs"), MAX_FRAMES)
