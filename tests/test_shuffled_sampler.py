"""The shuffled sampler (--sampler shuffled): every group once per epoch with speakers repeating in a batch, a
function of seed and epoch, disjoint rank shares; the switch to it for losses that classify speakers, and its
mistakes."""
import collections
from dataclasses import replace
from types import SimpleNamespace

import pytest

import arguments
import DatasetLoader
from runtime.errors import ConfigError, DataError


def shuffled(labels, n_per_speaker=1, max_seg=500, batch_size=8, seed=4, epoch=1, **kwargs):
    sampler = DatasetLoader.ShuffledSampler(SimpleNamespace(data_label=labels), nPerSpeaker=n_per_speaker,
                                            max_seg_per_spk=max_seg, batch_size=batch_size, seed=seed,
                                            **{"distributed": False, **kwargs})
    sampler.set_epoch(epoch)
    return sampler


LABELS = [speaker for speaker in range(3) for _ in range(8)]  # 3 speakers x 8 utterances


def test_shuffled_sampler_gives_every_item_once_and_repeats_speakers():
    items = list(shuffled(LABELS))
    assert sorted(index for item in items for index in item) == list(range(24))
    batches = [items[start:start + 8] for start in range(0, 24, 8)]
    assert all(len({LABELS[item[0]] for item in batch}) < 8 for batch in batches)
    pairs = list(shuffled(LABELS, n_per_speaker=2))
    assert len(pairs) == 8 and all(LABELS[a] == LABELS[b] for a, b in pairs)
    capped = list(shuffled(LABELS, max_seg=4, batch_size=4))
    assert sorted(collections.Counter(LABELS[item[0]] for item in capped).values()) == [4, 4, 4]


def test_shuffled_sampler_is_a_function_of_seed_and_epoch():
    assert list(shuffled(LABELS)) == list(shuffled(LABELS))
    assert list(shuffled(LABELS)) != list(shuffled(LABELS, epoch=2))
    assert list(shuffled(LABELS)) != list(shuffled(LABELS, seed=5))
    sampler = shuffled(LABELS)
    first = list(sampler)
    sampler.set_epoch(2)
    sampler.set_epoch(1)
    assert list(sampler) == first
    assert list(DatasetLoader.ResumedSampler(sampler, 8)) == first[8:]


def test_shuffled_sampler_ranks_take_disjoint_equal_shares():
    labels = [speaker for speaker in range(3) for _ in range(11)]
    shares = [list(shuffled(labels, batch_size=4, distributed=True, rank=rank, world_size=3)) for rank in range(3)]
    assert [len(share) for share in shares] == [8, 8, 8]
    seen = [index for share in shares for item in share for index in item]
    assert len(seen) == len(set(seen)) == 24


def data_settings(tiny_corpus, **changes):
    settings = arguments.parse_settings(["--train_list", tiny_corpus["train_list"],
                                         "--train_path", tiny_corpus["train_path"], "--nDataLoaderThread", "0"])
    return replace(settings.data, **changes)


def test_a_classifying_loss_switches_to_the_shuffled_sampler(tiny_corpus):
    data = data_settings(tiny_corpus, batch_size=8)
    speakers, chosen = DatasetLoader.check_training_data(data, world_size=1, classifies_speakers=True)
    assert speakers == 6 and chosen == replace(data, sampler="shuffled")
    dataset, sampler = DatasetLoader.training_data(chosen)
    assert isinstance(sampler, DatasetLoader.ShuffledSampler) and DatasetLoader.steps_per_epoch(sampler, chosen) == 3
    assert DatasetLoader.check_training_data(replace(data, batch_size=6), 1, True)[1].sampler == "balanced"
    with pytest.raises(DataError, match="--batch_size 8 needs that many different speakers"):
        DatasetLoader.check_training_data(data, world_size=1, classifies_speakers=False)
    with pytest.raises(DataError, match="makes no batch of 8 x 1 utterances for each of the 4 processes"):
        DatasetLoader.check_training_data(data, world_size=4, classifies_speakers=True)


@pytest.mark.parametrize("changes, trainfunc, classifies, message", [
    ({"sampler": "random"}, "softmax", True, "--sampler random is unknown; use balanced or shuffled"),
    ({"sampler": "shuffled"}, "angleproto", False, "--sampler shuffled needs a loss that classifies speakers, and "
                                                   "'angleproto' compares"),
    ({"sampler": "shuffled", "train_shards": "shards.list"}, "softmax", True,
     "--sampler shuffled does not apply to --train_shards"),
])
def test_sampler_mistakes(tiny_corpus, changes, trainfunc, classifies, message):
    with pytest.raises(ConfigError, match=message):
        DatasetLoader.check_sampler(data_settings(tiny_corpus, **changes), trainfunc, classifies)
