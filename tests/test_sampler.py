"""The speaker-balanced sampler: exact order, properties, distributed slices, __len__."""
import collections
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from DatasetLoader import drop_collisions, speaker_groups, train_dataset_sampler

# Seven utterances: speaker 0 -> 0, 1, 2; speaker 1 -> 3, 4; speaker 2 -> 5, 6.
SMALL_LABELS = [0, 0, 0, 1, 1, 2, 2]


def make_sampler(labels, n_per_speaker=1, max_seg=500, batch_size=2, distributed=False, seed=4, **kwargs):
    return train_dataset_sampler(SimpleNamespace(data_label=labels), n_per_speaker, max_seg, batch_size,
                                 distributed, seed, **kwargs)


def original_algorithm(labels, n_per_speaker, max_seg, batch_size, seed, epoch, rank=0, world_size=1):
    """A literal transcription of the fact sheet's section 3.4 (list membership, findex labels)."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    indices = torch.randperm(len(labels), generator=generator).tolist()
    per_label = {}
    for index in indices:
        per_label.setdefault(labels[index], []).append(index)
    flat_list, flat_label = [], []
    for findex, key in enumerate(sorted(per_label)):
        data = per_label[key]
        count = min(len(data), max_seg)
        count -= count % n_per_speaker
        for start in range(0, count, n_per_speaker):
            flat_list.append(data[start:start + n_per_speaker])
            flat_label.append(findex)
    mix_label, mix_map = [], []
    for ii in torch.randperm(len(flat_label), generator=generator).tolist():
        start_batch = len(mix_label) - len(mix_label) % batch_size
        if flat_label[ii] not in mix_label[start_batch:]:
            mix_label.append(flat_label[ii])
            mix_map.append(ii)
    mixed = [flat_list[i] for i in mix_map]
    total = len(mixed) - len(mixed) % (batch_size * world_size)
    return mixed[int(rank / world_size * total):int((rank + 1) / world_size * total)]


def test_exact_order_hand_checked():
    # seed 4 + epoch 1 = 5: first randperm(7) = [1, 0, 4, 2, 6, 5, 3], so the per-speaker orders are
    # speaker 0: [1, 0, 2], speaker 1: [4, 3], speaker 2: [6, 5]; second randperm(7) = [1, 6, 5, 3, 2, 4, 0]
    # over the groups [1] [0] [2] [4] [3] [6] [5] (speakers 0 0 0 1 1 2 2).
    first_two = torch.Generator().manual_seed(5)
    assert torch.randperm(7, generator=first_two).tolist() == [1, 0, 4, 2, 6, 5, 3]
    assert torch.randperm(7, generator=first_two).tolist() == [1, 6, 5, 3, 2, 4, 0]
    sampler = make_sampler(SMALL_LABELS, max_seg=3, batch_size=3)
    sampler.set_epoch(1)
    # batch 1 takes [0] (spk 0), [5] (spk 2), drops [6] (spk 2 again), takes [4] (spk 1);
    # batch 2 takes [2], [3], drops [1]: 5 kept, cut to one batch of 3.
    assert list(sampler) == [[0], [5], [4]]
    assert len(sampler) == 3


def test_exact_order_pairs_and_ranks():
    pairs = make_sampler(SMALL_LABELS, n_per_speaker=2, batch_size=2)
    pairs.set_epoch(1)
    # groups [1, 0] [4, 3] [6, 5]; second randperm(3) = [1, 2, 0]; 3 kept, cut to 2.
    assert list(pairs) == [[4, 3], [6, 5]]
    # max_seg 3, batch 2: all 7 groups kept ([0] [5] [6] [4] [2] [3] [1]); 2 ranks share the first 4.
    ranks = [make_sampler(SMALL_LABELS, max_seg=3, distributed=True, rank=r, world_size=2) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
    assert [list(sampler) for sampler in ranks] == [[[0], [5]], [[6], [4]]]


@pytest.mark.parametrize("n_per_speaker,max_seg,batch_size,world_size", [
    (1, 500, 4, 1), (2, 5, 3, 1), (3, 4, 5, 2), (2, 100, 8, 3), (1, 2, 7, 4)])
def test_matches_original_algorithm(n_per_speaker, max_seg, batch_size, world_size):
    rng = np.random.default_rng(n_per_speaker * 100 + batch_size)
    labels = rng.integers(0, 23, size=400).tolist()
    for epoch in (1, 2):
        for rank in range(world_size):
            sampler = make_sampler(labels, n_per_speaker, max_seg, batch_size, world_size > 1, seed=10,
                                   rank=rank, world_size=world_size)
            sampler.set_epoch(epoch)
            expected = original_algorithm(labels, n_per_speaker, max_seg, batch_size, 10, epoch, rank, world_size)
            assert list(sampler) == expected
            assert len(sampler) == len(expected)


def test_properties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, size=1500).tolist()
    sampler = make_sampler(labels, n_per_speaker=2, max_seg=20, batch_size=10, seed=3)
    before_first_epoch = len(sampler)
    assert before_first_epoch > 0 and before_first_epoch == len(list(sampler))
    sampler.set_epoch(7)
    items = list(sampler)
    assert len(items) == len(sampler) and len(items) % 10 == 0
    for start in range(0, len(items), 10):
        batch_speakers = [labels[item[0]] for item in items[start:start + 10]]
        assert len(set(batch_speakers)) == 10
    for item in items:
        assert len(item) == 2 and labels[item[0]] == labels[item[1]]
    used = [index for item in items for index in item]
    assert len(used) == len(set(used))
    assert max(collections.Counter(labels[index] for index in used).values()) <= 20
    # 30 speakers x 10 groups = 300 groups; collisions are dropped, so fewer remain
    assert len(items) < 300


def test_helpers_hand_checked():
    groups, group_labels = speaker_groups([5, 5, 5, 9, 9], [4, 2, 0, 3, 1], n_per_speaker=2, max_seg_per_spk=500)
    assert groups == [[2, 0], [4, 3]] and group_labels == [0, 1]
    assert drop_collisions([0, 1, 2, 3, 4], [0, 0, 1, 2, 1], batch_size=2) == [0, 2, 3, 4]


def test_epoch_changes_order_and_seed_reproduces():
    labels = np.random.default_rng(1).integers(0, 10, size=200).tolist()
    first, second = make_sampler(labels, seed=1), make_sampler(labels, seed=1)
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second)
    second.set_epoch(4)
    assert list(first) != list(second)


def test_rank_slices_disjoint_equal_sized():
    labels = np.random.default_rng(2).integers(0, 40, size=900).tolist()
    slices = [make_sampler(labels, batch_size=6, distributed=True, rank=r, world_size=3) for r in range(3)]
    items = [list(sampler) for sampler in slices]
    assert len({len(rank_items) for rank_items in items}) == 1 and len(items[0]) % 6 == 0
    flat = [tuple(item) for rank_items in items for item in rank_items]
    assert len(flat) == len(set(flat))
    whole = make_sampler(labels, batch_size=6)
    assert flat == [tuple(item) for item in list(whole)[:len(flat)]]


def test_rank_from_torch_distributed():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        labels = np.random.default_rng(3).integers(0, 10, size=100).tolist()
        from_dist = make_sampler(labels, distributed=True, rank=1, world_size=2)  # kwargs ignored
        assert list(from_dist) == list(make_sampler(labels))
    finally:
        dist.destroy_process_group()
