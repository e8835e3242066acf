"""--speed_perturb_mode per_epoch (wespeaker's speed perturbation): one random speed per batch item and epoch, the
epoch keeps its size, the label is shifted by the speed; in the file-list dataset and in the shard stream."""
import collections
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

import arguments
import DatasetLoader
from audio.shard_stream import ShardStream
from audio.training_crops import SPEED_FACTORS, draw_item_speed, item_rng
from DatasetLoader import ShuffledSampler, train_dataset_loader, train_dataset_sampler
from preparation.shards import make_shards
from runtime.errors import ConfigError

RATE = 16000
FREQUENCIES = (400.0, 600.0, 900.0)  # one pure tone per speaker
PER_EPOCH = {"speed_perturb": True, "speed_perturb_mode": "per_epoch"}


def dominant_frequency(audio: np.ndarray) -> float:
    """The frequency (Hz) of the strongest spectral peak of a 1-D signal."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * RATE / len(audio))


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """3 speakers of pure tones, 4 utterances of 1.2 s each: their train list and the same in 6 tar shards."""
    root = tmp_path_factory.mktemp("tones")
    lines = []
    for speaker, frequency in enumerate(FREQUENCIES):
        for utterance in range(4):
            relative = f"spk{speaker}/v/{utterance}.wav"
            (root / "wav" / relative).parent.mkdir(parents=True, exist_ok=True)
            phase = np.arange(int(1.2 * RATE)) / RATE + utterance / 7
            soundfile.write(root / "wav" / relative, 0.3 * np.sin(2 * np.pi * frequency * phase), RATE)
            lines.append(f"spk{speaker} {relative}\n")
    (root / "list.txt").write_text("".join(lines))
    make_shards(str(root / "list.txt"), str(root / "wav"), root / "shards", 0.08, seed=3, quiet=True)
    return root


def dataset(root, list_name="list.txt", max_frames=60, **kwargs) -> train_dataset_loader:
    options = {"augment": False, "musan_path": "", "rir_path": "", "max_frames": max_frames,
               "train_path": str(root / "wav"), "seed": 3, **PER_EPOCH, **kwargs}
    return train_dataset_loader(str(root / list_name), **options)


def sampler(kind, data_source, n_per_speaker=1, batch_size=3):
    return kind(data_source, nPerSpeaker=n_per_speaker, max_seg_per_spk=100, batch_size=batch_size,
                distributed=False, seed=3)


def check_speed(audio: torch.Tensor, label: int, speakers: int = 3) -> int:
    """Every crop of an item is its speaker's tone at the speed of its label; returns the speed's index."""
    step = label // speakers
    for crop in audio:
        assert dominant_frequency(crop.numpy()) == pytest.approx(FREQUENCIES[label % speakers] * SPEED_FACTORS[step],
                                                                 rel=0.01)
    return step


@pytest.mark.parametrize("kind", [train_dataset_sampler, ShuffledSampler])
@pytest.mark.parametrize("n_per_speaker", [1, 2])
def test_an_epoch_keeps_its_size_and_every_utterance_comes_once_at_one_speed(tones, kind, n_per_speaker):
    plain, per_epoch = dataset(tones, speed_perturb=False), dataset(tones)
    assert len(per_epoch) == len(plain) == 12 and per_epoch.data_label == plain.data_label
    assert per_epoch.speakers == ["spk0", "spk1", "spk2", "spk0@0.9", "spk1@0.9", "spk2@0.9", "spk0@1.1",
                                  "spk1@1.1", "spk2@1.1"]
    samplers = [sampler(kind, source, n_per_speaker) for source in (plain, per_epoch)]
    for epoch in (1, 2):
        per_epoch.set_epoch(epoch)
        for each in samplers:
            each.set_epoch(epoch)
        items = list(samplers[1])
        assert items == list(samplers[0]), "the sampler groups by the speakers' own labels, as without speeds"
        if kind is ShuffledSampler:
            assert sorted(index for item in items for index in item) == list(range(12))
        steps = [check_speed(*per_epoch[item]) for item in items]
        assert [per_epoch[item][1] % 3 for item in items] == [per_epoch.data_label[item[0]] for item in items]
        assert len(set(steps)) > 1


def test_speed_draws_are_uniform_differ_by_epoch_and_repeat_for_the_same_seed(tmp_path):
    """3,000 items of 30 speakers (one short file each, listed 100 times)."""
    lines = []
    for speaker in range(30):
        (tmp_path / "wav").mkdir(exist_ok=True)
        soundfile.write(tmp_path / "wav" / f"{speaker}.wav", np.full(3200, 0.1, np.float32), RATE)
        lines += [f"s{speaker:02d} {speaker}.wav\n"] * 100
    (tmp_path / "big.txt").write_text("".join(lines))
    source = dataset(tmp_path, "big.txt", max_frames=2)

    def label_steps(data_source, epoch, count=3000):
        data_source.set_epoch(epoch)
        return [data_source[[index]][1] // 30 for index in range(count)]

    first = label_steps(source, 1)
    counts = collections.Counter(first)
    assert sorted(counts) == [0, 1, 2] and all(abs(count - 1000) < 100 for count in counts.values())
    second = label_steps(source, 2)
    assert abs(sum(a == b for a, b in zip(first, second)) / 3000 - 1 / 3) < 0.05, "a new draw every epoch"
    assert label_steps(dataset(tmp_path, "big.txt", max_frames=2), 1, 300) == first[:300]
    assert label_steps(dataset(tmp_path, "big.txt", max_frames=2, seed=4), 1, 300) != first[:300]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_epoch_gives_the_same_batches(tones, workers):
    source = dataset(tones)
    order = sampler(ShuffledSampler, source)
    source.set_epoch(2)
    order.set_epoch(2)
    data = SimpleNamespace(batch_size=3, nDataLoaderThread=workers)
    full = list(DatasetLoader.epoch_loader(source, order, data))
    assert len(full) == 4
    for skip in (1, 3):
        rest = list(DatasetLoader.epoch_loader(source, order, data, skip))
        assert len(rest) == 4 - skip
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[skip:], rest))


def stream(tones, **overrides) -> ShardStream:
    settings = dict(train_shards=str(tones / "shards" / "shards.list"), max_frames=60, batch_size=3, nPerSpeaker=1,
                    max_seg_per_spk=500, nDataLoaderThread=0, augment=False, musan_path="", rir_path="", seed=10)
    return ShardStream(**{**settings, **overrides})


def epoch_batches(source: ShardStream, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    source.set_epoch(epoch)
    return list(source)


def test_shard_stream_draws_the_speed_of_each_item_like_the_file_list(tones):
    plain, per_epoch = stream(tones), stream(tones, **PER_EPOCH)
    assert per_epoch.steps == plain.steps == 4 and len(per_epoch.speakers) == 9
    steps = {}
    for epoch in (1, 2):
        batches = epoch_batches(per_epoch, epoch)
        assert len(batches) == 4
        for number, ((audio, labels), (_, plain_labels)) in enumerate(zip(batches, epoch_batches(plain, epoch))):
            assert torch.equal(labels % 3, plain_labels), "the same batches of speakers as without speeds"
            for slot, (item, label) in enumerate(zip(audio, labels.tolist())):
                drawn = draw_item_speed(item_rng(10, epoch, 0, 0, number, slot), 3)
                assert check_speed(item, label) == drawn[1] // 3 and SPEED_FACTORS[label // 3] == drawn[0]
        steps[epoch] = [label // 3 for _, labels in batches for label in labels.tolist()]
    assert steps[1] != steps[2] and set(steps[1] + steps[2]) == {0, 1, 2}
    again, first = epoch_batches(stream(tones, **PER_EPOCH), 1), epoch_batches(per_epoch, 1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    rest = list(DatasetLoader.epoch_loader(per_epoch, per_epoch, SimpleNamespace(nDataLoaderThread=0), 2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[2:], rest))


def test_start_up_checks_count_three_times_the_speakers_and_one_epoch_of_steps(tiny_corpus):
    settings = arguments.parse_settings(["--train_list", tiny_corpus["train_list"], "--train_path",
                                         tiny_corpus["train_path"], "--nDataLoaderThread", "0", "--batch_size", "3",
                                         "--speed_perturb", "--speed_perturb_mode", "per_epoch"])
    data = settings.data
    assert data.speed_perturb_mode == "per_epoch"
    speakers, checked = DatasetLoader.check_training_data(data, world_size=1)
    assert speakers == 18 and checked == data, "--nClasses must cover the labels of all three speeds"
    _, order = DatasetLoader.training_data(data)
    _, plain = DatasetLoader.training_data(replace(data, speed_perturb=False))
    _, expanded = DatasetLoader.training_data(replace(data, speed_perturb_mode="expand"))
    steps = [DatasetLoader.steps_per_epoch(each, data) for each in (order, plain, expanded)]
    assert steps[0] == steps[1] and steps[2] > 2 * steps[0]
    with pytest.raises(ConfigError, match="--speed_perturb_mode sometimes is unknown; use expand or per_epoch"):
        DatasetLoader.check_training_data(replace(data, speed_perturb_mode="sometimes"), world_size=1)
