"""Tar shards: writing (round trip, resume, bad input), the streaming reader (balance, partitions,
reproducibility, resume position) and training from shards in one and two processes."""
import collections
import io
import itertools
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from test_distributed import free_port
from test_resilience import inside_epoch, resilient_run, saved_position, start, wait_for
from test_train_cli import epoch_log, run_cli, small_run

import arguments
import dataprep
import DatasetLoader
from audio.shard_files import open_shards, read_shard, tar_members
from audio.shard_stream import ShardStream, speaker_balanced_batches
from preparation.shards import make_shards
from runtime.errors import DataError, MissingFileError

SHARD_MB = 0.1  # two 1.5 s utterances (48 kB each) per shard: 12 shards of the tiny corpus


@pytest.fixture(scope="module")
def shards(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus (6 speakers x 4 utterances) in 12 shards; returns the shard list."""
    folder = tmp_path_factory.mktemp("shards")
    make_shards(tiny_corpus["train_list"], tiny_corpus["train_path"], folder, SHARD_MB, seed=3, quiet=True)
    return folder / "shards.list"


def stream(shard_list, **overrides) -> ShardStream:
    settings = dict(train_shards=str(shard_list), max_frames=20, batch_size=3, nPerSpeaker=2, max_seg_per_spk=500,
                    nDataLoaderThread=0, augment=False, musan_path="", rir_path="", seed=10)
    return ShardStream(**{**settings, **overrides})


def epoch_batches(source: ShardStream, epoch: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    source.set_epoch(epoch)
    return list(source)


def list_entries(tiny_corpus) -> dict[str, str]:
    """Relative path -> speaker of the train list."""
    lines = Path(tiny_corpus["train_list"]).read_text().split("\n")
    return {path: speaker for speaker, path in (line.split() for line in lines if line)}


def test_round_trip_keeps_audio_bytes_speakers_and_counts(tiny_corpus, shards):
    entries = list_entries(tiny_corpus)
    read = {}
    per_shard = collections.defaultdict(set)
    for path in open_shards(str(shards)).paths:
        for key, speaker, audio in read_shard(path):
            assert key not in read
            read[key] = (speaker, audio.data)
            per_shard[os.path.basename(path)].add(speaker)
    assert sorted(read) == sorted(path[:-4] for path in entries)
    for path, speaker in entries.items():
        assert read[path[:-4]] == (speaker, (Path(tiny_corpus["train_path"]) / path).read_bytes())
    index = json.loads((shards.parent / "shards.index.json").read_text())
    assert index["utterances"] == 24 and len(index["shards"]) == 12 == len(shards.read_text().split())
    assert all(sum(counts.values()) == 4 for counts in index["speakers"].values())
    assert sum(len(speakers) == 2 for speakers in per_shard.values()) >= 6  # shuffled: shards mix speakers
    with tarfile.open(open_shards(str(shards)).paths[0]) as archive:
        names = archive.getnames()
    assert [os.path.splitext(name)[1] for name in names] == [".wav", ".spk"] * 2  # wespeaker's member layout


@pytest.mark.parametrize("form", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_follows_long_names_and_skips_other_members(tmp_path, form):
    long_key = "id00001/" + "v" * 120 + "/00001"  # over the 100 bytes of a plain header name
    members = {f"{long_key}.wav": b"RIFF audio", f"{long_key}.spk": b"id00001", "short.wav": b"x" * 513,
               "short.spk": b"id00002"}
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w", format=form) as archive:
        folder = tarfile.TarInfo("a_folder")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in members.items():  # ustar keeps a long name as a prefix and a name field
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with open(path, "rb") as handle:
        assert dict(tar_members(handle)) == members


def test_corrupt_shard_header_is_named(tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as archive:
        for name, data in (("a.wav", b"RIFF"), ("a.spk", b"id1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    content = bytearray(path.read_bytes())
    content[512 + 512 + 10] ^= 0xFF  # the second member's name: its header checksum no longer matches
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match=f"Cannot read shard {path}: invalid or truncated member header"):
        list(read_shard(str(path)))
    path.write_bytes(bytes(content[:514]))  # cut inside the first member's 4 bytes of data
    with pytest.raises(DataError, match="Cannot read shard .*: unexpected end of data"):
        list(read_shard(str(path)))


def test_rerun_skips_complete_shards_and_replaces_a_stale_partial(tiny_corpus, tmp_path, capsys):
    folder = tmp_path / "out"
    assert make_shards(tiny_corpus["train_list"], tiny_corpus["train_path"], folder, SHARD_MB, 3, True) == (12, 0)
    first = {path.name: path.read_bytes() for path in folder.glob("shard_*.tar")}
    (folder / "shard_000004.tar").unlink()
    (folder / "shard_000007.tar").unlink()
    (folder / ".shard_000007.tar.partial").write_bytes(b"half a shard from a killed run")
    (folder / "shards.list").unlink()
    assert make_shards(tiny_corpus["train_list"], tiny_corpus["train_path"], folder, SHARD_MB, 3, True) == (2, 10)
    assert {path.name: path.read_bytes() for path in folder.glob("shard_*.tar")} == first
    assert not list(folder.glob(".*.partial")) and len((folder / "shards.list").read_text().split()) == 12
    with pytest.raises(DataError, match="holds shards of another list, seed or --shard_size_mb"):
        make_shards(tiny_corpus["train_list"], tiny_corpus["train_path"], folder, SHARD_MB, 4, True)


def test_batches_have_distinct_speakers_with_n_per_speaker_each(tiny_corpus, shards):
    source = stream(shards)
    batches = epoch_batches(source)
    assert len(batches) == source.steps == 24 // (3 * 2)
    for data, labels in batches:
        assert data.shape == (3, 2, 20 * 160 + 240) and data.dtype == torch.float32
        assert len(set(labels.tolist())) == 3
    assert source.speakers == sorted(set(list_entries(tiny_corpus).values()))
    source.set_epoch(1)
    for plan in itertools.islice(source.plans(0), source.steps):
        for label, group in plan:
            assert len(group) == 2
            assert {str(audio).split(":")[-1].split("/")[0] for audio, _ in group} == {source.speakers[label]}


def test_balance_of_the_pure_batching_stage():
    items = [(label, f"u{label}.{i}") for i in range(4) for label in (0, 1, 2, 3)]
    batches = list(speaker_balanced_batches(items, 2, 2, np.random.default_rng(0)))
    assert len(batches) == 4  # 16 items: 8 groups of 2, 2 speakers a batch
    for batch in batches:
        assert len({label for label, _ in batch}) == 2
        assert all(len(group) == 2 and all(item.startswith(f"u{label}.") for item in group) for label, group in batch)
    used = collections.Counter(item for batch in batches for _, group in batch for item in group)
    assert set(used.values()) == {1} and len(used) == 16


def test_ranks_and_workers_read_disjoint_shards_covering_all(shards):
    keys_of = {path: {key for key, _, _ in read_shard(path)} for path in open_shards(str(shards)).paths}
    streams = [stream(shards, world_size=2, rank=rank, nDataLoaderThread=3, batch_size=1, nPerSpeaker=1)
               for rank in (0, 1)]
    for epoch in (1, 2):
        parts = [part.partition(epoch, part.rank, worker) for part in streams for worker in range(3)]
        keys = [key for part in parts for path in part for key in keys_of[path]]
        assert len(keys) == len(set(keys)) == 24 and all(len(part) == 2 for part in parts)
        for part in streams:
            part.set_epoch(epoch)
            for worker in range(3):
                own = set().union(*(keys_of[path] for path in part.partition(epoch, part.rank, worker)))
                plans = itertools.islice(part.plans(worker), 8)
                read = {str(audio).split(":")[-1][:-4] for plan in plans for _, group in plan for audio, _ in group}
                assert read and read <= own
    assert streams[0].partition(1, 0, 0) != streams[0].partition(2, 0, 0)  # shards reshuffled every epoch
    assert len(streams[0]) == len(streams[1]) == 24 // 2
    with pytest.raises(DataError, match="has 12 shard\\(s\\), fewer than the 16 readers \\(4 process\\(es\\) x 4"):
        stream(shards, world_size=4, nDataLoaderThread=4)


def test_same_seed_same_batches_other_seed_or_epoch_differs(shards):
    first, again = epoch_batches(stream(shards)), epoch_batches(stream(shards))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    other_seed = epoch_batches(stream(shards, seed=11))
    other_epoch = epoch_batches(stream(shards), epoch=2)
    for other in (other_seed, other_epoch):
        assert len(other) == len(first) and not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_epoch_continues_at_the_same_batch(shards, workers):
    source = stream(shards, nDataLoaderThread=workers, batch_size=2, nPerSpeaker=1)
    source.set_epoch(2)
    data = SimpleNamespace(batch_size=2, nDataLoaderThread=workers)
    full = list(DatasetLoader.epoch_loader(source, source, data))
    assert len(full) == 12
    for skip in (1, 5):
        loader = DatasetLoader.epoch_loader(source, source, data, skip)
        rest = list(loader)
        assert len(loader) == len(rest) == 12 - skip
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[skip:], rest))


def test_speed_perturb_and_spec_augment_use_the_file_list_rules(shards):
    plain, masked = epoch_batches(stream(shards)), epoch_batches(stream(shards, spec_augment=True))
    assert [labels.tolist() for _, labels in plain] == [labels.tolist() for _, labels in masked]
    assert all(not torch.equal(a, b) and a.shape == b.shape for (a, _), (b, _) in zip(plain, masked))
    speeds = stream(shards, speed_perturb=True)
    assert speeds.steps == 3 * 4 and speeds.speakers[6] == "id00000@0.9" and len(speeds.speakers) == 18
    speeds.set_epoch(1)
    for plan in itertools.islice(speeds.plans(0), speeds.steps):
        for label, group in plan:
            assert {speed for _, speed in group} == {(1.0, 0.9, 1.1)[label // 6]}
            assert {str(audio).split(":")[-1].split("/")[0] for audio, _ in group} == {speeds.speakers[label % 6]}


def test_unreadable_member_is_named_or_replaced_with_skip_bad_audio(tiny_corpus, tmp_path):
    broken = tmp_path / "list.txt"
    entries = sorted(list_entries(tiny_corpus).items())
    (tmp_path / "wav").symlink_to(tiny_corpus["train_path"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "noise.wav").write_bytes(b"RIFF not really a wav file")
    broken.write_text("".join(f"{speaker} wav/{path}\n" for path, speaker in entries) + "id00000 bad/noise.wav\n")
    make_shards(str(broken), str(tmp_path), tmp_path / "out", 10.0, 3, True)
    strict = stream(tmp_path / "out" / "shards.list", batch_size=1, nPerSpeaker=1)  # every utterance once
    with pytest.raises(DatasetLoader.AudioReadError, match="shard_000000.tar:bad/noise.wav: cannot read audio.*"
                                                           "pass --skip_bad_audio"):
        epoch_batches(strict)
    tolerant = stream(tmp_path / "out" / "shards.list", skip_bad_audio=True)
    members = {key: audio for key, _, audio in read_shard(tolerant.shards.paths[0])}
    group = [(members["bad/noise"], 1.0), (members[f"wav/{entries[0][0][:-4]}"], 1.0)]
    with pytest.warns(UserWarning, match="skipping unreadable training utterance"):
        crop = tolerant.read_crop(group, 0, np.random.default_rng(0))
    assert crop.shape == (1, 20 * 160 + 240) and tolerant.stats.skipped == 1
    assert np.array_equal(crop, tolerant.crops.crop(group[1][0], 1.0, np.random.default_rng(0).random(2)[1]))


def test_train_shards_from_yaml_and_flag(shards, tmp_path):
    config = tmp_path / "shards.yaml"
    config.write_text(yaml.safe_dump({"train_shards": str(shards)}))
    assert arguments.parse_settings(["--config", str(config)]).data.train_shards == str(shards)
    settings = arguments.parse_settings(["--train_shards", str(shards), "--batch_size", "3", "--nPerSpeaker", "2",
                                         "--nDataLoaderThread", "0"])
    dataset, sampler = DatasetLoader.training_data(settings.data)
    assert dataset is sampler and DatasetLoader.steps_per_epoch(sampler, settings.data) == 4
    assert DatasetLoader.check_training_data(settings.data, world_size=1) == (6, settings.data)
    with pytest.raises(DataError, match="--batch_size 7 needs that many different speakers"):
        DatasetLoader.check_training_data(replace(settings.data, batch_size=7), world_size=1)


def dataprep_error(capsys, *argv) -> str:
    assert dataprep.main(["--make_shards", "--quiet", *argv]) == 1
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "Traceback" not in error, error
    return lines[0]


def test_bad_input_is_one_line_naming_file_and_line(tiny_corpus, tmp_path, capsys):
    out = ["--train_path", tiny_corpus["train_path"], "--save_path", str(tmp_path / "out")]
    missing_list = tmp_path / "none.txt"
    assert f"{missing_list}: it does not exist" in dataprep_error(capsys, "--train_list", str(missing_list), *out)
    bad = tmp_path / "bad.txt"
    bad.write_text("id00000 id00000/sess0/00000.wav\n\nid00001\n")
    assert f"{bad} line 3: expected '<speaker_id> <relative_path>'" in dataprep_error(
        capsys, "--train_list", str(bad), *out)
    bad.write_text("id00000 id00000/sess0/00000.wav\nid00000 id00000/sess0/gone.wav\n")
    assert f"{bad} line 2: " in dataprep_error(capsys, "--train_list", str(bad), *out)
    bad.write_text("id00000 id00000/sess0/00000.m4a\n")
    assert f"{bad} line 1: " in dataprep_error(capsys, "--train_list", str(bad), *out)
    listing = tmp_path / "shards" / "shards.list"
    listing.parent.mkdir()
    listing.write_text("shard_000000.tar\n")
    with pytest.raises(MissingFileError, match="shards.index.json does not exist"):
        open_shards(str(listing))
    (listing.parent / "shards.index.json").write_text(json.dumps({"speakers": {"a": {"shard_000000.tar": 1}}}))
    with pytest.raises(MissingFileError, match=f"{listing} line 1: shard .*shard_000000.tar does not exist"):
        open_shards(str(listing))
    listing.write_text("other.tar\n")
    with pytest.raises(DataError, match=f"{listing} line 1: other.tar is not in the index"):
        open_shards(str(listing))


def shard_run(tiny_corpus, save_path, shards, *extra) -> list[str]:
    """resilient_run (3 epochs of batches of 2 speakers, 1 s crops) from the shards instead of the list."""
    return resilient_run(tiny_corpus, save_path, "--train_shards", str(shards), *extra)


@pytest.mark.integration
def test_sigkill_inside_an_epoch_then_resume_from_shards_gives_identical_losses(tiny_corpus, shards, tmp_path):
    reference = tmp_path / "reference"
    output = run_cli(shard_run(tiny_corpus, reference, shards)).stdout
    assert "data wait" in output
    assert sorted(epoch_log(reference)) == [1, 2, 3]
    list_run = tmp_path / "list"
    run_cli(resilient_run(tiny_corpus, list_run, "--max_epoch", "1", "--test_interval", "1"))
    assert epoch_log(list_run)[1] != epoch_log(reference)[1]  # really trained from the shards
    save_path = tmp_path / "killed"
    argv = shard_run(tiny_corpus, save_path, shards)
    process = start([*argv, "--checkpoint_minutes", "0.0001"])
    wait_for(lambda: inside_epoch(2, saved_position(save_path)), process)
    process.kill()
    process.wait()
    completed, steps = saved_position(save_path)
    assert completed == 1 and 1 <= steps < 6
    resumed = run_cli(argv).stdout
    assert f"continuing with epoch 2 after its first {steps} batches" in resumed
    killed, uninterrupted = epoch_log(save_path), epoch_log(reference)
    assert sorted(killed) == [1, 2, 3]
    for epoch in (1, 2, 3):
        assert float(killed[epoch][0]) == pytest.approx(float(uninterrupted[epoch][0]), abs=1e-6)


@pytest.mark.integration
def test_two_gloo_processes_train_from_shards(tiny_corpus, shards, tmp_path):
    save_path = tmp_path / "ddp"
    output = run_cli(small_run(tiny_corpus, save_path, "--train_shards", str(shards), "--max_epoch", "1",
                               "--batch_size", "2", "--distributed", "--nproc", "2", "--port", free_port())).stdout
    assert output.count("Epoch 1, TEER/TAcc") == 1
    timing = json.loads((save_path / "result" / "timing.jsonl").read_text().splitlines()[0])
    assert 0 <= timing["data_wait_share"] < 1 and timing["samples_per_second"] > 0
    assert (save_path / "model" / "model000000001.model").is_file()
    steps = 24 // (2 * 2 * 2)  # utterances / (batch_size x nPerSpeaker x processes), on each rank
    assert timing["samples_per_second"] * timing["seconds"] == pytest.approx(steps * 2 * 2, rel=1e-6)
