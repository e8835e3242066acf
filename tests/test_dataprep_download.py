"""dataprep --download / --concatenate / --extract against a real HTTP server on 127.0.0.1."""
import base64
import hashlib
import io
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile

import dataprep

pytestmark = pytest.mark.integration  # real CLI runs, subprocesses or servers

USER, PASSWORD, KEY = "alice", "s3cret", "k3y-123"


class FileServer(ThreadingHTTPServer):
    """Serves `files` by name; checks Basic auth or a key (except for `public` names); can drop a response halfway."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.public: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        parsed = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        name = query["file"][0] if "file" in query else parsed.path.rsplit("/", 1)[-1]
        self.server.requests.append((name, self.headers.get("Range")))
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        authorized = self.headers.get("Authorization") == expected or query.get("key") == [KEY]
        if not authorized and name not in self.server.public:
            self.send_error(401, "Unauthorized")
            return
        if name not in self.server.files:
            self.send_error(404)
            return
        body, start = self.server.files[name], 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if name in self.server.drop_once:
            self.server.drop_once.discard(name)
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    """A running FileServer, shut down after the test."""
    httpd = FileServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def voxceleb1_zip() -> bytes:
    """A small zip in the vox1 layout: wav/<speaker>/<video>/<utt>.wav."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buffer, "w") as archive:
        for speaker in ("id10001", "id10002"):
            for utt in (1, 2):
                wav = io.BytesIO()
                soundfile.write(wav, rng.uniform(-0.5, 0.5, 8000), 16000, format="WAV", subtype="PCM_16")
                archive.writestr(f"wav/{speaker}/vidA/{utt:05d}.wav", wav.getvalue())
    return buffer.getvalue()


@pytest.fixture
def setup(server, tmp_path):
    """Serve a vox1 dev zip split in three parts plus a test zip; write matching list files."""
    whole = voxceleb1_zip()
    third = len(whole) // 3 + 1
    parts = {f"vox1_dev_wav_parta{c}": whole[i * third:(i + 1) * third] for i, c in enumerate("abc")}
    test_zip = voxceleb1_zip()
    server.files.update(parts, **{"vox1_test_wav.zip": test_zip})
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "fileparts.txt").write_text("".join(f"{name} {md5(data)}\n" for name, data in server.files.items()))
    (lists / "files.txt").write_text(f"vox1_dev_wav_parta* vox1_dev_wav.zip {md5(whole)}\n")
    return {"data": tmp_path / "data", "lists": lists, "server": server, "whole": whole}


def run(setup, *flags: str) -> int:
    return dataprep.main(["--save_path", str(setup["data"]), "--lists", str(setup["lists"]), "--quiet",
                          "--retry_wait", "0", *flags])


def classic(setup) -> list[str]:
    return ["--download", "--user", USER, "--password", PASSWORD, "--base_url", setup["server"].url + "/voxceleb/"]


def test_download_join_extract_and_skip(setup):
    server = setup["server"]
    assert run(setup, *classic(setup)) == 0
    for name, data in server.files.items():
        assert (setup["data"] / name).read_bytes() == data
    assert not list(setup["data"].glob("*.partial"))
    count = len(server.requests)
    assert run(setup, *classic(setup)) == 0
    assert len(server.requests) == count, "parts with a correct md5 must not be downloaded again"

    assert run(setup, "--extract") == 0
    assert (setup["data"] / "vox1_dev_wav.zip").read_bytes() == setup["whole"]
    assert not list(setup["data"].glob("vox1_dev_wav_part*")), "verified parts are removed after joining"
    dev = sorted(p.relative_to(setup["data"]).as_posix() for p in (setup["data"] / "voxceleb1").rglob("*.wav"))
    assert dev[0] == "voxceleb1/dev/wav/id10001/vidA/00001.wav" and len(dev) == 8
    assert (setup["data"] / "voxceleb1/test/wav/id10002/vidA/00002.wav").is_file()
    assert run(setup, "--extract") == 0, "extraction is re-runnable"


def test_key_mode_uses_query_url(setup):
    template = setup["server"].url + "/download/voxceleb?file={file}&key={key}"
    assert run(setup, "--download", "--key", KEY, "--base_url", template) == 0
    assert (setup["data"] / "vox1_test_wav.zip").is_file()


def test_wrong_md5_is_an_error_and_the_file_is_kept_aside(setup, capsys):
    setup["server"].files["vox1_dev_wav_partab"] = b"corrupted" * 100
    assert run(setup, *classic(setup)) == 1
    error = capsys.readouterr().err
    assert "vox1_dev_wav_partab" in error and "md5" in error
    assert not (setup["data"] / "vox1_dev_wav_partab").exists()
    assert (setup["data"] / "vox1_dev_wav_partab.md5-mismatch").read_bytes() == b"corrupted" * 100
    assert (setup["data"] / "vox1_dev_wav_partac").is_file(), "the other parts are still downloaded"


def test_dropped_connection_is_resumed_with_range(setup):
    server = setup["server"]
    server.drop_once.add("vox1_dev_wav_partaa")
    assert run(setup, *classic(setup)) == 0
    size = len(server.files["vox1_dev_wav_partaa"])
    ranges = [r for name, r in server.requests if name == "vox1_dev_wav_partaa"]
    assert ranges == [None, f"bytes={size // 2}-"]
    assert (setup["data"] / "vox1_dev_wav_partaa").read_bytes() == server.files["vox1_dev_wav_partaa"]


def test_partial_file_of_an_earlier_run_is_resumed(setup):
    data = setup["server"].files["vox1_test_wav.zip"]
    setup["data"].mkdir()
    (setup["data"] / "vox1_test_wav.zip.partial").write_bytes(data[:1000])
    assert run(setup, *classic(setup)) == 0
    assert ("vox1_test_wav.zip", "bytes=1000-") in setup["server"].requests
    assert (setup["data"] / "vox1_test_wav.zip").read_bytes() == data


def test_bad_credentials_give_a_clear_error(setup, capsys):
    flags = classic(setup)
    flags[flags.index(PASSWORD)] = "wrong"
    assert run(setup, *flags) == 1
    error = capsys.readouterr().err
    assert "HTTP 401" in error and "--user/--password" in error
    assert run(setup, "--download", "--key", "bad", "--base_url", setup["server"].url + "/?file={file}&key={key}") == 1
    assert "HTTP 401" in capsys.readouterr().err


def test_missing_credentials_and_missing_parts(setup, capsys):
    assert run(setup, "--download") == 1
    assert "--user and --password" in capsys.readouterr().err
    assert run(setup, "--concatenate") == 1
    assert "run --download first" in capsys.readouterr().err


def test_bad_join_keeps_parts(setup, capsys):
    assert run(setup, *classic(setup)) == 0
    (setup["lists"] / "files.txt").write_text("vox1_dev_wav_parta* vox1_dev_wav.zip " + "0" * 32 + "\n")
    assert run(setup, "--concatenate") == 1
    assert "vox1_dev_wav.zip" in capsys.readouterr().err
    assert len(list(setup["data"].glob("vox1_dev_wav_parta?"))) == 3
    assert (setup["data"] / "vox1_dev_wav.zip.partial.md5-mismatch").is_file()
    assert not (setup["data"] / "vox1_dev_wav.zip").exists()


def test_malformed_list_names_file_and_line(setup, capsys):
    (setup["lists"] / "fileparts.txt").write_text("vox1_test_wav.zip abc\nonly_one_field\n")
    assert run(setup, *classic(setup)) == 1
    error = capsys.readouterr().err
    assert "fileparts.txt, line 2" in error
