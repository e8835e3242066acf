"""Reading SpeechBrain's hyperparams.yaml (HyperPyYAML) as data: its object tags are recorded, never built, and
`!ref <key>` references are resolved against the file's own top-level keys."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from importers.release_files import ReleaseError

OBJECT_TAGS = ("!new:", "!name:", "!apply:")
REFERENCE = re.compile(r"<([\w.\[\]]+)>")


@dataclass
class Tagged:
    """An object tag such as `!new:speechbrain.lobes.features.Fbank` with its arguments (a mapping or a list)."""

    kind: str  # new, name or apply
    target: str  # the dotted Python name
    args: dict | list = field(default_factory=dict)


class Reference(str):
    """The text of a `!ref` value, e.g. '<n_mels>' or '<pretrained_path>/embedding_model.ckpt'."""


class HyperparamsLoader(yaml.SafeLoader):
    """A safe YAML loader that understands HyperPyYAML's tags as plain data."""


def _object(loader: HyperparamsLoader, suffix: str, node: yaml.Node, kind: str) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        args = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    else:
        args = {} if loader.construct_scalar(node) in ("", None) else [loader.construct_scalar(node)]
    return Tagged(kind, suffix, args)


for _tag in OBJECT_TAGS:
    HyperparamsLoader.add_multi_constructor(
        _tag, lambda loader, suffix, node, kind=_tag.strip("!:"): _object(loader, suffix, node, kind))
HyperparamsLoader.add_constructor("!ref", lambda loader, node: Reference(loader.construct_scalar(node)))
HyperparamsLoader.add_constructor("!copy", lambda loader, node: Reference(loader.construct_scalar(node)))
HyperparamsLoader.add_constructor("!tuple", lambda loader, node: tuple(loader.construct_sequence(node)))


def _lookup(document: dict, name: str, path: str, seen: tuple[str, ...]):
    """The value of a reference such as 'n_mels' or 'modules[embedding_model]', itself resolved."""
    if name in seen:
        raise ReleaseError(f"{path}: the reference <{name}> refers to itself")
    value = document
    for part in re.findall(r"[^.\[\]]+", name):
        if not isinstance(value, dict) or part not in value:
            raise ReleaseError(f"{path}: the reference <{name}> names no key of the file")
        value = value[part]
    return resolved(value, document, path, (*seen, name))


def resolved(value, document: dict, path: str, seen: tuple[str, ...] = ()):
    """`value` with every reference replaced by what it refers to (a reference inside text is substituted)."""
    if isinstance(value, Reference):
        whole = REFERENCE.fullmatch(value.strip())
        if whole:
            return _lookup(document, whole.group(1), path, seen)
        return REFERENCE.sub(lambda match: str(_lookup(document, match.group(1), path, seen)), value)
    if isinstance(value, Tagged):
        return Tagged(value.kind, value.target, resolved(value.args, document, path, seen))
    if isinstance(value, dict):
        return {key: resolved(item, document, path, seen) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolved(item, document, path, seen) for item in value)
    return value


def read_hyperparams(path: str) -> dict:
    """The hyperparams file as data: object tags as Tagged, references resolved."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.load(handle, Loader=HyperparamsLoader)  # noqa: S506 (a SafeLoader subclass)
    except (OSError, UnicodeDecodeError) as error:
        raise ReleaseError(f"Cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    except yaml.constructor.ConstructorError as error:
        raise ReleaseError(f"{path} uses a YAML tag this reader does not know: {' '.join(str(error).split())}"
                           ) from None
    except yaml.YAMLError as error:
        raise ReleaseError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(document, dict):
        raise ReleaseError(f"{path}: expected a YAML mapping, found a {type(document).__name__}")
    return {key: resolved(value, document, path) for key, value in document.items()}
