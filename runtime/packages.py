"""Inference packages: the embedding model's weights, the settings that build it, a format tag and a sha256."""
from __future__ import annotations

import hashlib

import torch

from runtime.errors import UserError

PACKAGE_TAG = "voxceleb_trainer_next-package/1"
MODEL_PREFIX = "__S__."


class PackageError(UserError, ValueError):
    """An inference package that is damaged, altered or of an unknown format version."""


def is_package(content: dict) -> bool:
    """Whether a loaded file is an inference package (of any version)."""
    return str(content.get("format", "")).startswith(PACKAGE_TAG.split("/")[0] + "/")


def weights_hash(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def package_content(weights: dict[str, torch.Tensor], settings: dict, provenance: dict | None = None) -> dict:
    """A package of the embedding model's tensors (`__S__.` keys only), its plain-valued settings and, for an
    imported release, where it came from (toolkit, network, files and their sha256)."""
    model = {name: tensor.detach().cpu().clone() for name, tensor in weights.items() if name.startswith(MODEL_PREFIX)}
    if not model:
        raise PackageError(f"No {MODEL_PREFIX} (embedding model) tensors to package")
    plain = {name: value for name, value in settings.items() if isinstance(value, (str, int, float, bool))}
    content = {"format": PACKAGE_TAG, "args": plain, "weights": model, "sha256": weights_hash(model)}
    if provenance:
        content["provenance"] = provenance
    return content


def package_entry(path: str, key: str) -> dict:
    """One dict entry ("args", "provenance") of the package at `path`; {} for any other file or a package without
    it (its loader reports what is wrong with the file)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a package: a legacy-format checkpoint, a missing or damaged file
        return {}
    return dict(content.get(key) or {}) if isinstance(content, dict) and is_package(content) else {}


def package_settings(path: str) -> dict:
    """The saved settings of the package at `path`; {} for any other file."""
    return package_entry(path, "args")


def verified_weights(content: dict, path: str) -> dict[str, torch.Tensor]:
    """The weights of a package after checking its format version and content hash."""
    if content.get("format") != PACKAGE_TAG:
        raise PackageError(f"{path} is a package of format {content.get('format')!r}; this version reads "
                           f"{PACKAGE_TAG!r}")
    weights = content.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise PackageError(f"{path} is a package without weights; export it again")
    if weights_hash(weights) != content.get("sha256"):
        raise PackageError(f"{path}: the weights do not match the package's sha256 (the file was altered or "
                           "damaged); export it again from the checkpoint")
    return weights
