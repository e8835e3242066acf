"""Archives for dataprep: resumable md5-checked downloads, joining split parts, and safe zip/tar extraction."""
from __future__ import annotations

import base64
import hashlib
import http.client
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from runtime.atomic_files import atomic_write, publish
from runtime.errors import UserError

CHUNK = 1 << 20
ACCESS_HELP = ("VoxCeleb needs an access grant: request it at https://www.robots.ox.ac.uk/~vgg/data/voxceleb/ and "
               "pass the user name and password you received (--user/--password, classic mirror) or the key "
               "(--key, current mirror).")


class DataprepError(UserError):
    """A data preparation step failed; the message says what to do."""


def md5sum(path: Path, quiet: bool = False) -> str:
    """Hex md5 of a file, read in chunks with a progress bar."""
    digest = hashlib.md5()
    with open(path, "rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                          desc=f"md5 {path.name}", disable=quiet, leave=False) as bar:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def set_aside(path: Path) -> Path:
    """Rename a suspect file to '<name>.md5-mismatch' (numbered if taken) and return the new path."""
    aside = path.with_name(f"{path.name}.md5-mismatch")
    number = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.md5-mismatch.{number}")
        number += 1
    os.replace(path, aside)
    return aside


def basic_auth(user: str, password: str) -> str:
    """The value of an HTTP Basic Authorization header."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def http_error(url: str, error: urllib.error.HTTPError) -> DataprepError:
    """A readable error for an HTTP status that retrying cannot fix."""
    if error.code in (401, 403):
        return DataprepError(f"{url}: HTTP {error.code} {error.reason}: the server refused the credentials. "
                             + ACCESS_HELP)
    if error.code == 404:
        return DataprepError(f"{url}: HTTP 404 Not Found: the mirror does not have this file; "
                             "pass another mirror with --base_url.")
    return DataprepError(f"{url}: HTTP {error.code} {error.reason}.")


def stream_to(response: http.client.HTTPResponse, partial: Path, offset: int, name: str, quiet: bool) -> None:
    """Append (offset > 0) or write a response body to the partial file with a size/speed bar."""
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length else None
    with open(partial, "ab" if offset else "wb") as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                             unit_divisor=1024, desc=name, disable=quiet) as bar:
        while chunk := response.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))
    if total is not None and partial.stat().st_size < total:
        raise http.client.IncompleteRead(b"", total - partial.stat().st_size)


def fetch(url: str, target: Path, authorization: str | None = None, retries: int = 5, retry_wait: float = 1.0,
          quiet: bool = False) -> None:
    """Download url to target through '<target>.partial', resuming it with HTTP Range after a broken connection."""
    partial = target.with_name(f"{target.name}.partial")
    for attempt in range(retries + 1):
        offset = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                stream_to(response, partial, offset if response.status == 206 else 0, target.name, quiet)
            publish(partial, target)
            return
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset:
                publish(partial, target)
                return
            if error.code < 500:
                raise http_error(url, error) from None
            problem = f"HTTP {error.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            problem = str(error) or type(error).__name__
        if attempt == retries:
            raise DataprepError(f"{url}: download failed after {retries + 1} attempts ({problem}). Run the same "
                                f"command again to resume from {partial}.")
        if not quiet:
            print(f"{target.name}: {problem}; resuming (attempt {attempt + 2} of {retries + 1})")
        time.sleep(retry_wait * 2 ** attempt)


def fetch_verified(url: str, target: Path, md5: str, authorization: str | None = None, retries: int = 5,
                   retry_wait: float = 1.0, quiet: bool = False) -> bool:
    """Make target hold the file with this md5: skip it if already right, else download it; False on mismatch."""
    if target.exists():
        if md5sum(target, quiet) == md5:
            if not quiet:
                print(f"{target.name}: already downloaded, md5 correct")
            return True
        print(f"{target.name}: md5 is wrong, kept aside as {set_aside(target).name}; downloading again")
    fetch(url, target, authorization, retries, retry_wait, quiet)
    found = md5sum(target, quiet)
    if found != md5:
        print(f"{target.name}: md5 {found} differs from the expected {md5}; kept aside as {set_aside(target)}")
        return False
    return True


def join_parts(parts: list[Path], target: Path, md5: str, quiet: bool = False) -> None:
    """Concatenate parts into target (via a temporary file), check its md5, then delete the parts."""
    partial = target.with_name(f"{target.name}.partial")
    digest = hashlib.md5()
    with open(partial, "wb") as out, tqdm(total=sum(p.stat().st_size for p in parts), unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=f"join {target.name}", disable=quiet) as bar:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    if digest.hexdigest() != md5:
        aside = set_aside(partial)
        raise DataprepError(f"{target.name}: md5 of the joined parts {[p.name for p in parts]} is "
                            f"{digest.hexdigest()}, expected {md5}; kept the result aside as {aside} and left the "
                            "parts in place. Delete the bad part(s) and run --download again.")
    publish(partial, target)
    for part in parts:
        part.unlink()


def safe_destination(root: Path, name: str, archive: Path) -> Path:
    """Where an archive member goes; refuses absolute paths and '..' that would leave root (CVE-2007-4559)."""
    destination = (root / name).resolve()
    if os.path.isabs(name) or not destination.is_relative_to(root.resolve()):
        raise DataprepError(f"{archive}: member '{name}' would be written outside {root}; refusing to extract "
                            "this archive (it may be malicious or corrupt).")
    return destination


def write_member(source, destination: Path, size: int) -> bool:
    """Copy one member to destination via a temporary name unless a file of that size is there; True if written."""
    if destination.is_file() and destination.stat().st_size == size:
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(destination) as partial, open(partial, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)
    return True


def extract(archive: Path, root: Path, keep: Callable[[str], bool] = lambda name: True, quiet: bool = False) -> int:
    """Extract a zip or tar archive into root in one pass, skipping finished files; returns files written."""
    root.mkdir(parents=True, exist_ok=True)
    written = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            members = [info for info in handle.infolist() if keep(info.filename)]
            targets = [safe_destination(root, info.filename, archive) for info in members]
            for info, target in tqdm(list(zip(members, targets)), desc=f"extract {archive.name}", unit="file",
                                     disable=quiet):
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                with handle.open(info) as source:
                    written += write_member(source, target, info.file_size)
        return written
    with tarfile.open(archive) as handle:
        for member in tqdm(iter_tar(handle, root, archive, keep), desc=f"extract {archive.name}", unit="file",
                           disable=quiet):
            target = root / member.name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                written += write_member(handle.extractfile(member), target, member.size)
    return written


def iter_tar(handle: tarfile.TarFile, root: Path, archive: Path, keep: Callable[[str], bool]) -> Iterable:
    """Tar members to extract, checked on the way; links are refused, they are never needed here."""
    for member in handle:
        if not keep(member.name):
            continue
        safe_destination(root, member.name, archive)
        if member.issym() or member.islnk():
            raise DataprepError(f"{archive}: member '{member.name}' is a link to '{member.linkname}'; refusing to "
                                "extract links (they can point outside the target folder).")
        yield member
