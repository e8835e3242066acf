"""dataprep --corpus cnceleb: download from a real HTTP server on 127.0.0.1 (split archive joined, md5 checked),
extraction, the train list and the trial list, on a tiny corpus of real flac files in the CN-Celeb layout."""
import hashlib
import io
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile

import dataprep
from preparation.cnceleb import read_archives

pytestmark = pytest.mark.integration  # real CLI runs and a server

# Relative path -> seconds of audio. CN-Celeb1: dev speakers id00000-1, eval speakers id00800-1; CN-Celeb2: id10000.
AUDIO = {
    "CN-Celeb_flac/data/id00000/speech-01-001.flac": 2.5,
    "CN-Celeb_flac/data/id00000/singing-02-001.flac": 0.5,
    "CN-Celeb_flac/data/id00001/vlog-01-001.flac": 3.0,
    "CN-Celeb_flac/data/id00800/speech-01-001.flac": 2.0,
    "CN-Celeb_flac/eval/enroll/id00800-enroll.flac": 4.0,
    "CN-Celeb_flac/eval/enroll/id00801-enroll.flac": 4.0,
    "CN-Celeb_flac/eval/test/id00800-speech-01-002.flac": 2.0,
    "CN-Celeb_flac/eval/test/id00801-vlog-01-001.flac": 2.0,
    "CN-Celeb2_flac/data/id10000/drama-01-001.flac": 1.0,
    "CN-Celeb2_flac/data/id10000/interview-03-002.flac": 2.2,
}
TEXT = {  # the release's lists name .wav files, the audio is .flac
    "CN-Celeb_flac/dev/dev.lst": "id00000\nid00001\n",
    "CN-Celeb_flac/eval/lists/enroll.lst": "id00800-enroll enroll/id00800-enroll.wav\n"
                                           "id00801-enroll enroll/id00801-enroll.wav\n",
    "CN-Celeb_flac/eval/lists/trials.lst": "id00800-enroll test/id00800-speech-01-002.wav 1\n"
                                           "id00800-enroll test/id00801-vlog-01-001.wav 0\n"
                                           "id00801-enroll test/id00800-speech-01-002.wav 0\n"
                                           "id00801-enroll test/id00801-vlog-01-001.wav 1\n",
    "CN-Celeb2_flac/spk.lst": "id10000\n",
}
TRAIN_LIST = [
    "id00000 CN-Celeb_flac/data/id00000/singing-02-001.flac",
    "id00000 CN-Celeb_flac/data/id00000/speech-01-001.flac",
    "id00001 CN-Celeb_flac/data/id00001/vlog-01-001.flac",
    "id10000 CN-Celeb2_flac/data/id10000/drama-01-001.flac",
    "id10000 CN-Celeb2_flac/data/id10000/interview-03-002.flac",
]
TRIALS = [
    "1 CN-Celeb_flac/eval/enroll/id00800-enroll.flac CN-Celeb_flac/eval/test/id00800-speech-01-002.flac",
    "0 CN-Celeb_flac/eval/enroll/id00800-enroll.flac CN-Celeb_flac/eval/test/id00801-vlog-01-001.flac",
    "0 CN-Celeb_flac/eval/enroll/id00801-enroll.flac CN-Celeb_flac/eval/test/id00800-speech-01-002.flac",
    "1 CN-Celeb_flac/eval/enroll/id00801-enroll.flac CN-Celeb_flac/eval/test/id00801-vlog-01-001.flac",
]


def write_corpus(root: Path) -> None:
    """The tiny corpus as extracted files under root."""
    rng = np.random.default_rng(0)
    for name, seconds in AUDIO.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / name, rng.uniform(-0.3, 0.3, int(seconds * 16000)), 16000, format="FLAC")
    for name, text in TEXT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def tar_gz(root: Path, folder: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(root / folder, arcname=folder)
    return buffer.getvalue()


class Server(ThreadingHTTPServer):
    """Serves `files` under /resources/82/ with HTTP Range; logs the names asked for."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        self.server.requests.append(name)
        if not self.path.startswith("/resources/82/") or name not in self.server.files:
            self.send_error(404)
            return
        body = self.server.files[name]
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def mirror(tmp_path):
    """A server with cn-celeb_v2.tar.gz whole and cn-celeb2_v2.tar.gz in three parts, and a matching cnceleb.txt."""
    write_corpus(tmp_path / "source")
    first, second = tar_gz(tmp_path / "source", "CN-Celeb_flac"), tar_gz(tmp_path / "source", "CN-Celeb2_flac")
    third = len(second) // 3 + 1
    parts = {f"cn-celeb2_v2.tar.gza{c}": second[i * third:(i + 1) * third] for i, c in enumerate("abc")}
    server = Server()
    server.files = {"cn-celeb_v2.tar.gz": first, **parts}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "cnceleb.txt").write_text(f"# test mirror\ncn-celeb_v2.tar.gz {md5(first)}\n"
                                       f"cn-celeb2_v2.tar.gz {md5(second)} {' '.join(parts)}\n")
    yield {"server": server, "lists": lists, "data": tmp_path / "data", "second": second}
    server.shutdown()
    server.server_close()


def run(mirror, *flags: str) -> int:
    return dataprep.main(["--save_path", str(mirror["data"]), "--lists", str(mirror["lists"]), "--corpus", "cnceleb",
                          "--openslr_url", f"http://127.0.0.1:{mirror['server'].server_address[1]}/resources/",
                          "--quiet", "--retry_wait", "0", "--jobs", "2", *flags])


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_download_join_extract_and_lists(mirror, capsys):
    data = mirror["data"]
    assert run(mirror, "--download", "--extract", "--convert", "--make_train_list", "--make_trials") == 0
    assert (data / "cn-celeb2_v2.tar.gz").read_bytes() == mirror["second"]
    assert not list(data.glob("cn-celeb2_v2.tar.gza?")), "the parts are deleted once the joined md5 is right"
    assert not list(data.rglob("*.partial"))
    assert lines(data / "cnceleb_train_list.txt") == TRAIN_LIST, "CN-Celeb1 dev speakers only, then CN-Celeb2"
    assert lines(data / "cnceleb_trials.txt") == TRIALS
    out = capsys.readouterr().out
    assert "nothing to convert" in out and "5 utterances of 3 speakers" in out and "4 trials (2 target)" in out
    assert f"--test_path {data}" in out and f"--train_path {data}" in out
    for line in TRAIN_LIST + TRIALS:
        assert all((data / name).is_file() for name in line.split()[1:])

    count = len(mirror["server"].requests)
    assert run(mirror, "--download", "--extract", "--check_trials", str(data / "cnceleb_trials.txt")) == 0
    assert len(mirror["server"].requests) == count, "archives with a correct md5 are not downloaded again"
    assert "4 files, 0 missing" in capsys.readouterr().out


def test_min_duration_leaves_out_short_utterances(mirror, capsys):
    write_corpus(mirror["data"])
    assert run(mirror, "--make_train_list", "--min_duration", "2", "--train_list", str(mirror["data"] / "l.txt")) == 0
    assert lines(mirror["data"] / "l.txt") == [TRAIN_LIST[1], TRAIN_LIST[2], TRAIN_LIST[4]]
    assert "2 under 2.0 s left out" in capsys.readouterr().out


def test_bad_part_fails_the_joined_md5_and_keeps_the_parts(mirror, capsys):
    mirror["server"].files["cn-celeb2_v2.tar.gzab"] = b"corrupted" * 100
    assert run(mirror, "--download") == 1
    error = capsys.readouterr().err
    assert "cn-celeb2_v2.tar.gz" in error and "md5" in error and "cn-celeb2_v2.tar.gzab" in error
    data = mirror["data"]
    assert not (data / "cn-celeb2_v2.tar.gz").exists()
    assert (data / "cn-celeb2_v2.tar.gz.partial.md5-mismatch").is_file()
    assert len(list(data.glob("cn-celeb2_v2.tar.gza?"))) == 3, "the parts stay for the user to check"
    assert (data / "cn-celeb_v2.tar.gz").is_file(), "the whole archive was downloaded before"


def test_wrong_md5_of_a_whole_archive_is_kept_aside(mirror, capsys):
    mirror["server"].files["cn-celeb_v2.tar.gz"] = b"not the archive"
    assert run(mirror, "--download") == 1
    assert "md5 mismatch for cn-celeb_v2.tar.gz" in capsys.readouterr().err
    assert (mirror["data"] / "cn-celeb_v2.tar.gz.md5-mismatch").read_bytes() == b"not the archive"


def test_corrupt_archive_is_a_clear_error(mirror, capsys):
    mirror["data"].mkdir()
    (mirror["data"] / "cn-celeb_v2.tar.gz").write_bytes(b"\x1f\x8b\x08\x00truncated gzip")
    assert run(mirror, "--extract") == 1
    assert "cn-celeb_v2.tar.gz cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--make_train_list"], "Neither CN-Celeb_flac nor CN-Celeb2_flac"),
    (["--make_trials"], "enroll.lst not found; run --extract first"),
    (["--extract"], "run --download first"),
    (["--corpus", "voxceleb", "--make_trials"], "--check_trials"),
])
def test_missing_folders_say_what_to_run(mirror, capsys, flags, message):
    assert run(mirror, *flags) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name, text, message", [
    ("CN-Celeb_flac/dev/dev.lst", "id00000\nid00001 extra\n", "dev.lst, line 2: expected one speaker id"),
    ("CN-Celeb_flac/dev/dev.lst", "id00000\nid00042\n", "names speaker id00042"),
    ("CN-Celeb2_flac/spk.lst", "id00001\n", "Speaker id00001 is in both"),
])
def test_bad_speaker_lists_name_file_and_line(mirror, capsys, name, text, message):
    write_corpus(mirror["data"])
    (mirror["data"] / name).write_text(text)
    if name.endswith("spk.lst"):
        (mirror["data"] / "CN-Celeb2_flac/data/id00001").mkdir()
        soundfile.write(mirror["data"] / "CN-Celeb2_flac/data/id00001/a-01-001.flac", np.zeros(1600), 16000)
    assert run(mirror, "--make_train_list") == 1
    assert message in capsys.readouterr().err
    assert not (mirror["data"] / "cnceleb_train_list.txt").exists()


@pytest.mark.parametrize("text, message", [
    ("id00800-enroll test/id00800-speech-01-002.wav 1\nid00800-enroll test/id00801-vlog-01-001.wav\n",
     "trials.lst, line 2: expected '<enrol id> <test file> <0 or 1>'"),
    ("id00800-enroll test/id00800-speech-01-002.wav 2\n", "trials.lst, line 1: expected"),
    ("id00802-enroll test/id00800-speech-01-002.wav 0\n", "trials.lst, line 1: enrolment id id00802-enroll"),
    ("\nid00800-enroll test/id00899-speech-01-001.wav 0\n", "trials.lst, line 2: test/id00899-speech-01-001.wav is not"),
])
def test_bad_trial_lines_name_the_line(mirror, capsys, text, message):
    write_corpus(mirror["data"])
    (mirror["data"] / "CN-Celeb_flac/eval/lists/trials.lst").write_text(text)
    assert run(mirror, "--make_trials") == 1
    assert message in capsys.readouterr().err
    assert not [name for name in os.listdir(mirror["data"]) if "cnceleb_trials" in name], "not even a partial one"


def test_malformed_archive_list_names_the_line(mirror, capsys):
    (mirror["lists"] / "cnceleb.txt").write_text("cn-celeb_v2.tar.gz 7ab1b214028a7439e26608b2d5a0336c\nx.tar.gz nomd5\n")
    assert run(mirror, "--download") == 1
    assert "cnceleb.txt, line 2" in capsys.readouterr().err


def test_shipped_archive_list_parses():
    rows = read_archives(Path(dataprep.__file__).resolve().parent / "lists")
    assert [(name, len(parts)) for name, _, parts in rows] == [("cn-celeb_v2.tar.gz", 0), ("cn-celeb2_v2.tar.gz", 3)]
