"""Reading a release as its toolkit publishes it, without running code from it: weights-only state dicts, YAML
files, content hashes, and the one error type of the importers."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field

import torch
import yaml

from runtime.errors import UserError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # {"state_dict": {...}} and the like


class ReleaseError(UserError, ValueError):
    """A release that cannot be imported: missing file, unknown model, foreign or damaged weights."""


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (the provenance a package records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_file(folder: str, name: str, toolkit: str) -> str:
    """The path of `name` inside a release folder; a ReleaseError when it is missing."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        present = ", ".join(sorted(os.listdir(folder))[:8]) or "nothing"
        raise ReleaseError(f"{folder} is not a {toolkit} release: it has no {name} (found: {present})")
    return path


def unsafe_global(error: Exception) -> str | None:
    """The pickled global a weights-only load refused (e.g. 'numpy.core.multiarray._reconstruct'), if that was it."""
    match = re.search(r"(?:Unsupported global|GLOBAL)\W+(?:GLOBAL\s+)?([\w.]+)", str(error))
    return match.group(1) if match else None


def read_checkpoint(path: str):
    """The object a released weights file holds, loaded weights-only (never executing pickled code)."""
    if not os.path.isfile(path):
        raise ReleaseError(f"Weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        culprit = unsafe_global(error)
        raise ReleaseError(f"{path} needs pickled code{f' ({culprit})' if culprit else ''} to load; it is refused "
                           "because an import never runs code from a downloaded file. Save its state_dict alone "
                           "(torch.save(model.state_dict(), path)) with the toolkit that wrote it") from None
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise ReleaseError(f"Cannot read {path}: {type(error).__name__}: {str(error).splitlines()[0]}. Is the "
                           "download complete?") from None


def read_state_dict(path: str, content=None) -> dict[str, torch.Tensor]:
    """The tensors of a released weights file (or of its already loaded `content`), unwrapped from
    {"state_dict": ...}-style dicts and stripped of DistributedDataParallel's "module." prefixes."""
    if content is None:
        content = read_checkpoint(path)
    while isinstance(content, dict):
        wrapped = [key for key in WRAPPER_KEYS if isinstance(content.get(key), dict)]
        if not wrapped or any(isinstance(value, torch.Tensor) for value in content.values()):
            break
        content = content[wrapped[0]]
    if not isinstance(content, dict):
        raise ReleaseError(f"{path} holds a {type(content).__name__}, not a state dict of tensors")
    tensors = {key.removeprefix("module."): value for key, value in content.items()
               if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ReleaseError(f"{path} holds no tensors")
    return tensors


def read_yaml(path: str) -> dict:
    """A plain YAML mapping (safe loading); errors name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError) as error:
        raise ReleaseError(f"Cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    except yaml.YAMLError as error:
        raise ReleaseError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(content, dict):
        raise ReleaseError(f"{path}: expected a YAML mapping, found a {type(content).__name__}")
    return content


def setting(mapping: dict, key: str, where: str, kind: type | tuple[type, ...] | None = None, default=None,
            required: bool = True):
    """mapping[key], checked for type; a ReleaseError names the file and key when it is missing or of another type."""
    if key not in mapping:
        if required:
            raise ReleaseError(f"{where}: the key '{key}' is missing")
        return default
    value = mapping[key]
    accepted = (int, float) if kind is float else kind
    wrong_type = kind is not None and not isinstance(value, accepted)
    if wrong_type or (isinstance(value, bool) and kind in (int, float)):
        raise ReleaseError(f"{where}: '{key}' is {value!r}, expected a {getattr(kind, '__name__', kind)}")
    return value


@dataclass
class ImportedRelease:
    """What an importer read from a release: our settings for the network and front end, the release's tensors and
    the rules that rename them, and where they came from."""

    toolkit: str
    network: str  # the release's own name of the network, e.g. "ResNet34 (TSTP, 256-d)"
    settings: dict  # flags of this framework: model, nOut, n_mels, model options, front end, scoring
    weights: dict[str, torch.Tensor]
    rules: list = field(default_factory=list)  # importers.transfer.Rule
    ignored: tuple[str, ...] = ()  # key prefixes left out (a training classifier)
    files: list[str] = field(default_factory=list)  # the files read, for the provenance
    classes: int | None = None  # rows of the release's training classifier, when it has one
