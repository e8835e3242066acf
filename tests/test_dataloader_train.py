"""The training dataset: list parsing, start-up checks, items, reproducibility, bad audio."""
import random

import numpy as np
import pytest
import soundfile
import torch

from DatasetLoader import AudioReadError, train_dataset_loader, train_dataset_sampler, worker_init_fn


def write_utterances(root, speakers=3, utterances=3, seconds=3.0):
    """`<spk>/v/<n>.wav` noise files of a fixed length; returns `speaker relative_path` lines."""
    rng = np.random.default_rng(0)
    lines = []
    for speaker in range(speakers):
        for utterance in range(utterances):
            relative = f"spk{speaker}/v/{utterance}.wav"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(root / relative, rng.uniform(-0.3, 0.3, int(seconds * 16000)).astype(np.float32), 16000)
            lines.append(f"spk{speaker} {relative}")
    return lines


def make_dataset(tmp_path, lines, **kwargs):
    (tmp_path / "train_list.txt").write_bytes("".join(lines).encode())
    options = dict(augment=False, musan_path=str(tmp_path / "no_musan"), rir_path=str(tmp_path / "no_rir"),
                   max_frames=100, train_path=str(tmp_path / "wav"), seed=10, nPerSpeaker=2)
    options.update(kwargs)
    return train_dataset_loader(str(tmp_path / "train_list.txt"), **options)


@pytest.fixture
def corpus(tmp_path):
    return tmp_path, write_utterances(tmp_path / "wav")


def test_list_with_crlf_blank_lines_and_spaces(corpus):
    tmp_path, lines = corpus
    messy = ["\r\n"] + [f"  {line.replace(' ', '   ')}  \r\n" for line in lines] + ["\r\n", "   \r\n"]
    dataset = make_dataset(tmp_path, messy)
    assert len(dataset) == 9
    assert dataset.data_label == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert dataset.data_list[4] == str(tmp_path / "wav" / "spk1/v/1.wav")


def test_labels_follow_sorted_speaker_ids(corpus):
    tmp_path, lines = corpus
    dataset = make_dataset(tmp_path, [line + "\n" for line in reversed(lines)])
    assert dataset.data_label == [2, 2, 2, 1, 1, 1, 0, 0, 0]


def test_malformed_line_names_file_and_line(corpus):
    tmp_path, lines = corpus
    broken = [line + "\n" for line in lines[:2]] + ["\n", "spk9only\n"]
    with pytest.raises(ValueError, match=r"train_list\.txt line 4: expected"):
        make_dataset(tmp_path, broken)


def test_missing_files_are_listed_with_count(corpus):
    tmp_path, lines = corpus
    extra = [f"spk0 spk0/v/missing{i}.wav\n" for i in range(12)] + ["spk5 nowhere/x.wav\n"]
    with pytest.raises(FileNotFoundError, match=r"(?s)13 of 22 files.*train_list\.txt.*--train_path.*missing0\.wav"):
        make_dataset(tmp_path, [line + "\n" for line in lines] + extra)


def test_small_speakers_are_reported(corpus):
    tmp_path, lines = corpus
    with pytest.warns(UserWarning, match=r"1 of 4 speakers .* fewer than nPerSpeaker=2 .*lonely"):
        make_dataset(tmp_path, [line + "\n" for line in lines] + ["lonely spk0/v/0.wav\n"])


def test_nothing_globbed_without_augment(corpus):
    tmp_path, lines = corpus
    dataset = make_dataset(tmp_path, [line + "\n" for line in lines])  # MUSAN/RIR folders do not exist
    assert dataset.augmenter is None


def test_item_shape_and_label(corpus):
    tmp_path, lines = corpus
    dataset = make_dataset(tmp_path, [line + "\n" for line in lines])
    audio, label = dataset[[3, 5]]
    assert audio.shape == (2, 100 * 160 + 240) and audio.dtype == torch.float32 and label == 1


def run_epoch(dataset, epoch, workers):
    sampler = train_dataset_sampler(dataset, 2, 500, 2, False, 10)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers,
                                         worker_init_fn=worker_init_fn, drop_last=True)
    return [(audio.clone(), label.clone()) for audio, label in loader]


def test_same_seed_same_crops_any_worker_count(corpus):
    tmp_path, lines = corpus
    list_lines = [line + "\n" for line in lines]
    first = run_epoch(make_dataset(tmp_path, list_lines), 1, workers=0)
    again = run_epoch(make_dataset(tmp_path, list_lines), 1, workers=0)
    workers = run_epoch(make_dataset(tmp_path, list_lines), 1, workers=2)
    for (a, la), (b, lb), (c, lc) in zip(first, again, workers):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(la, lb) and torch.equal(la, lc)
    dataset = make_dataset(tmp_path, list_lines)
    dataset.set_epoch(2)
    other_epoch = dataset[[0, 1]][0]
    dataset.set_epoch(1)
    assert not torch.equal(other_epoch, dataset[[0, 1]][0])
    assert not torch.equal(make_dataset(tmp_path, list_lines, seed=11)[[0, 1]][0], dataset[[0, 1]][0])


class GlobalRandom(torch.utils.data.Dataset):
    """Returns draws of the global RNGs, to observe how worker_init_fn seeds them."""

    def __init__(self, seed, epoch):
        self.seed, self.epoch = seed, epoch

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.tensor([random.random(), np.random.random(), torch.rand(1).item()])


def draws(seed, epoch):
    loader = torch.utils.data.DataLoader(GlobalRandom(seed, epoch), batch_size=1, num_workers=2,
                                         worker_init_fn=worker_init_fn)
    return torch.cat(list(loader))


def test_worker_init_fn_seeds_from_seed_epoch_and_worker():
    first = draws(10, 1)
    assert torch.equal(first, draws(10, 1))
    assert not torch.equal(first, draws(10, 2)) and not torch.equal(first, draws(11, 1))
    assert not torch.equal(first[0], first[1])  # items 0 and 1 come from workers 0 and 1


def corrupt(tmp_path, relative):
    (tmp_path / "wav" / relative).write_bytes(b"not audio at all\n" * 20)


def test_corrupt_file_error_names_file_through_workers(corpus):
    tmp_path, lines = corpus
    corrupt(tmp_path, "spk1/v/2.wav")
    dataset = make_dataset(tmp_path, [line + "\n" for line in lines])
    with pytest.raises(AudioReadError, match=r"spk1/v/2\.wav.*--skip_bad_audio"):
        run_epoch(dataset, 1, workers=2)


def test_skip_bad_audio_uses_same_speaker_and_counts(corpus):
    tmp_path, lines = corpus
    corrupt(tmp_path, "spk1/v/2.wav")
    dataset = make_dataset(tmp_path, [line + "\n" for line in lines], skip_bad_audio=True)
    with pytest.warns(UserWarning, match=r"skipping unreadable.*spk1/v/2\.wav"):
        audio, label = dataset[[5, 3]]
    assert label == 1 and dataset.stats.skipped == 1
    assert dataset.stats.summary() == "1 unreadable training file(s) replaced (--skip_bad_audio)"
    sources = [soundfile.read(tmp_path / "wav" / f"spk1/v/{n}.wav", dtype="float32")[0] for n in (0, 1)]
    assert any(is_window_of(audio[0].numpy(), source) for source in sources)
    for everyone_bad in ("spk1/v/0.wav", "spk1/v/1.wav"):
        corrupt(tmp_path, everyone_bad)
    with pytest.warns(UserWarning), pytest.raises(AudioReadError, match="every utterance of speaker spk1"):
        dataset[[5]]


def is_window_of(crop, source):
    """Whether `crop` is a contiguous window of `source`."""
    starts = np.flatnonzero(source[:len(source) - len(crop) + 1] == crop[0])
    return any(np.array_equal(source[start:start + len(crop)], crop) for start in starts)
