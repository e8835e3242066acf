"""The built-in demo corpus: layout, lists, disjoint speakers, determinism, skip-when-complete."""
import hashlib
from glob import glob
from pathlib import Path

import numpy as np
import pytest
import soundfile

import dataprep
from preparation import demo_corpus as democorpus

TINY = democorpus.DemoSpec(train_speakers=3, test_speakers=3, sessions=2, utterances=2, trials=16,
                           min_seconds=2.0, max_seconds=2.5, augment_items=4)


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return democorpus.make_demo_corpus(tmp_path_factory.mktemp("demo"), seed=3, spec=TINY, jobs=2)


def test_layout_and_audio(corpus):
    wavs = sorted(glob(f"{corpus}/wav/*/*/*.wav"))
    assert len(wavs) == 6 * 2 * 2
    for path in wavs:
        samples, rate = soundfile.read(path)
        assert rate == 16000 and samples.ndim == 1
        assert 2.0 * 16000 <= len(samples) <= 2.5 * 16000
        assert 0.005 < np.sqrt(np.mean(samples ** 2)) < 0.5 and np.max(np.abs(samples)) < 1.0
    assert Path(wavs[0]).relative_to(corpus / "wav").parts[2] == "00001.wav"
    assert len(Path(wavs[0]).parts[-2]) == 11, "session folders look like YouTube ids"


def test_lists_and_disjoint_speakers(corpus):
    train = [line.split() for line in (corpus / "train_list.txt").read_text().splitlines()]
    assert len(train) == 3 * 2 * 2
    assert all(path.startswith(speaker + "/") and (corpus / "wav" / path).is_file() for speaker, path in train)
    train_speakers = {speaker for speaker, _ in train}
    trials = [line.split() for line in (corpus / "veri_test.txt").read_text().splitlines()]
    assert len(trials) == 16 and sum(label == "1" for label, _, _ in trials) == 8
    test_speakers = {path.split("/")[0] for _, a, b in trials for path in (a, b)}
    assert len(train_speakers) == 3 and len(test_speakers) == 3 and not train_speakers & test_speakers
    for label, a, b in trials:
        assert (corpus / "wav" / a).is_file() and (corpus / "wav" / b).is_file()
        same_speaker = a.split("/")[0] == b.split("/")[0]
        assert same_speaker == (label == "1")
        if same_speaker:
            assert a.split("/")[1] != b.split("/")[1], "target trials compare different sessions"
    assert len({(a, b) for _, a, b in trials}) == 16


def test_augmentation_files_match_the_loader_globs(corpus):
    musan = glob(f"{corpus}/musan_split/*/*/*/*.wav")
    assert {Path(p).parts[-4] for p in musan} == {"noise", "speech", "music"}
    assert len([p for p in musan if Path(p).parts[-4] == "speech"]) >= 7, "babble mixes up to 7 files"
    assert all(soundfile.info(p).frames == 80000 for p in musan)
    rirs = glob(f"{corpus}/RIRS_NOISES/simulated_rirs/*/*/*.wav")
    assert {Path(p).parts[-3] for p in rirs} == {"smallroom", "mediumroom"}
    rir, _ = soundfile.read(rirs[0])
    assert np.argmax(np.abs(rir)) < 0.01 * 16000, "the direct path comes first"


def test_deterministic_from_seed(corpus, tmp_path):
    again = democorpus.make_demo_corpus(tmp_path / "again", seed=3, spec=TINY, jobs=1)
    assert digests(again) == digests(corpus)
    voice = democorpus.draw_voice
    assert voice(democorpus.stream(3, democorpus.VOICE, 0)).f0 != voice(democorpus.stream(4, democorpus.VOICE, 0)).f0


def test_speakers_differ_more_than_sessions():
    voices = [democorpus.draw_voice(democorpus.stream(0, democorpus.VOICE, s)) for s in range(50)]
    pitches = np.log([v.f0 for v in voices])
    shifts = [democorpus.draw_session(democorpus.stream(0, democorpus.SESSION, 0, s)).f0_shift for s in range(50)]
    assert np.std(pitches) * 12 / np.log(2) > 3 * np.std(shifts)


def test_complete_corpus_is_skipped_and_other_settings_refused(corpus, capsys):
    before = digests(corpus)
    stamp = (corpus / democorpus.MARKER).stat().st_mtime_ns
    democorpus.make_demo_corpus(corpus, seed=3, spec=TINY)
    assert "already complete" in capsys.readouterr().out
    assert (corpus / democorpus.MARKER).stat().st_mtime_ns == stamp and digests(corpus) == before
    with pytest.raises(ValueError, match="other settings"):
        democorpus.make_demo_corpus(corpus, seed=5, spec=TINY)


def test_cli_demo(tmp_path):
    flags = ["--save_path", str(tmp_path / "demo"), "--demo", "--demo_train_speakers", "1",
             "--demo_test_speakers", "2", "--jobs", "2", "--quiet"]
    assert dataprep.main(flags) == 0
    assert (tmp_path / "demo" / democorpus.MARKER).is_file()
    assert len((tmp_path / "demo" / "train_list.txt").read_text().splitlines()) == 4 * 3
