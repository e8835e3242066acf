"""SpeechBrain releases: the spkrec-ecapa-voxceleb-style folder with embedding_model.ckpt and hyperparams.yaml,
whose compute_features, mean_var_norm and embedding_model entries decide the front end and the network (our
ECAPA_TDNN in its speechbrain variant)."""
from __future__ import annotations

import os

from importers.hyperparams import Tagged, read_hyperparams
from importers.release_files import ImportedRelease, ReleaseError, read_state_dict, require_file
from importers.transfer import Rule
from models.ECAPA_TDNN import ATTENTION_BOTTLENECK, DILATIONS, RES2NET_SCALE, SE_BOTTLENECK

FEATURES = "speechbrain.lobes.features.Fbank"
NORMALISATION = "speechbrain.processing.features.InputNormalization"
ECAPA = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
# Fbank arguments our speechbrain front end follows only at these (SpeechBrain's default) values
FBANK_DEFAULTS = {"sample_rate": 16000, "n_fft": 400, "win_length": 25, "hop_length": 10, "f_min": 0,
                  "f_max": None, "deltas": False, "context": False, "requires_grad": False,
                  "filter_shape": "triangular", "left_frames": 5, "right_frames": 5,
                  "param_change_factor": 1.0, "param_rand_factor": 0.0}
ECAPA_DEFAULTS = {"kernel_sizes": [5, 3, 3, 3, 1], "dilations": [1, *DILATIONS, 1],
                  "attention_channels": ATTENTION_BOTTLENECK, "res2net_scale": RES2NET_SCALE,
                  "se_channels": SE_BOTTLENECK, "groups": [1, 1, 1, 1, 1], "dropout": 0.0, "device": "cpu"}
RULES: list[Rule] = [
    (r"^blocks\.0\.conv\.conv\.", "layer1.0."), (r"^blocks\.0\.norm\.norm\.", "layer1.2."),
    (r"^blocks\.([123])\.", lambda match: f"blocks.{int(match.group(1)) - 1}."),
    (r"\.tdnn([12])\.conv\.conv\.", lambda match: f".body.{2 * int(match.group(1)) - 2}.0."),
    (r"\.tdnn([12])\.norm\.norm\.", lambda match: f".body.{2 * int(match.group(1)) - 2}.2."),
    (r"\.res2net_block\.blocks\.(\d+)\.conv\.conv\.", r".body.1.convs.\1.0."),
    (r"\.res2net_block\.blocks\.(\d+)\.norm\.norm\.", r".body.1.convs.\1.2."),
    (r"\.se_block\.conv([12])\.conv\.", r".body.3.linear\1."),
    (r"^mfa\.conv\.conv\.", "aggregate."), (r"^mfa\.norm\.norm\.", "aggregate_bn."),
    (r"^asp\.tdnn\.conv\.conv\.", "pool.linear1."), (r"^asp\.tdnn\.norm\.norm\.", "pool.attention_bn."),
    (r"^asp\.conv\.conv\.", "pool.linear2."), (r"^asp_bn\.norm\.", "bn."), (r"^fc\.conv\.", "embedding."),
]


def tagged(hyperparams: dict, key: str, target: str, where: str) -> dict:
    """The arguments of the object `key` of the file, which must be a `!new:<target>`."""
    node = hyperparams.get(key)
    if not isinstance(node, Tagged) or node.target != target or not isinstance(node.args, dict):
        found = f"!{node.kind}:{node.target}" if isinstance(node, Tagged) else repr(node)
        raise ReleaseError(f"{where}: '{key}' must be !new:{target}, found {found}")
    return node.args


def check_defaults(args: dict, defaults: dict, key: str, where: str) -> None:
    """Refuse an argument whose value our network or front end does not follow, naming it."""
    for name, value in args.items():
        if name in defaults and value != defaults[name] and not (value == 8000 and name == "f_max"):
            raise ReleaseError(f"{where}: {key} {name} is {value!r}; importable releases have {defaults[name]!r}")


def ecapa_settings(args: dict, where: str) -> dict:
    """Our ECAPA_TDNN settings from embedding_model's arguments."""
    unknown = sorted(set(args) - set(ECAPA_DEFAULTS) - {"input_size", "channels", "lin_neurons", "activation",
                                                         "global_context"})
    if unknown:
        raise ReleaseError(f"{where}: embedding_model argument '{unknown[0]}' is not importable")
    check_defaults(args, ECAPA_DEFAULTS, "embedding_model", where)
    activation = args.get("activation")
    if activation is not None and not (isinstance(activation, Tagged) and activation.target == "torch.nn.ReLU"):
        raise ReleaseError(f"{where}: embedding_model activation must be torch.nn.ReLU")
    channels = args.get("channels", [512, 512, 512, 512, 1536])
    if not (isinstance(channels, list) and len(channels) == 5 and len(set(channels[:4])) == 1
            and all(isinstance(value, int) for value in channels)):
        raise ReleaseError(f"{where}: embedding_model channels must be four equal block widths and the "
                           f"aggregation width, e.g. [1024, 1024, 1024, 1024, 3072]; got {channels!r}")
    if "input_size" not in args:
        raise ReleaseError(f"{where}: embedding_model has no input_size")
    return {"model": "ECAPA_TDNN", "ecapa_variant": "speechbrain", "channels": channels[0],
            "aggregation_channels": channels[4], "global_context": bool(args.get("global_context", True)),
            "n_mels": int(args["input_size"]), "nOut": int(args.get("lin_neurons", 192))}


def front_end_settings(hyperparams: dict, n_mels: int, where: str) -> dict:
    """Our speechbrain front end from compute_features and mean_var_norm."""
    fbank = tagged(hyperparams, "compute_features", FEATURES, where)
    check_defaults(fbank, FBANK_DEFAULTS, "compute_features", where)
    if fbank.get("n_mels", 40) != n_mels:
        raise ReleaseError(f"{where}: compute_features n_mels {fbank.get('n_mels', 40)} differs from "
                           f"embedding_model input_size {n_mels}")
    normalisation = tagged(hyperparams, "mean_var_norm", NORMALISATION, where)
    if normalisation.get("norm_type", "global") != "sentence" or normalisation.get("std_norm", True):
        raise ReleaseError(f"{where}: mean_var_norm must be norm_type sentence with std_norm False (found "
                           f"{normalisation.get('norm_type', 'global')}, {normalisation.get('std_norm', True)})")
    return {"frontend": "speechbrain", "mean_norm": True}


def read(path: str) -> ImportedRelease:
    """Read a SpeechBrain speaker-embedding release folder."""
    if not os.path.isdir(path):
        raise ReleaseError(f"--checkpoint {path}: a SpeechBrain release is a folder with hyperparams.yaml and "
                           "embedding_model.ckpt")
    hyperparams_path = require_file(path, "hyperparams.yaml", "SpeechBrain")
    weights_path = require_file(path, "embedding_model.ckpt", "SpeechBrain")
    hyperparams = read_hyperparams(hyperparams_path)
    settings = ecapa_settings(tagged(hyperparams, "embedding_model", ECAPA, hyperparams_path), hyperparams_path)
    settings.update(front_end_settings(hyperparams, settings["n_mels"], hyperparams_path))
    network = f"ECAPA_TDNN (C={settings['channels']}, {settings['nOut']}-d)"
    return ImportedRelease("speechbrain", network, settings, read_state_dict(weights_path), RULES, (),
                           [hyperparams_path, weights_path])
