"""The command line and YAML configs: the original's flags and semantics, plus ours, into one namespace."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import yaml

import evaluation
from runtime.errors import ConfigError

RUNTIME_KEYS = ("model_save_path", "result_save_path", "feat_save_path", "gpu", "config", "debug")
LIST_KEYS = ("test_list",)  # keys whose YAML value may be a list (joined with commas like the command line)
# Smallest accepted value of numeric flags; checked after the YAML is applied.
MINIMUM = {"max_frames": 1, "eval_frames": 0, "batch_size": 1, "max_seg_per_spk": 1, "nDataLoaderThread": 0,
           "test_interval": 1, "max_epoch": 1, "nPerSpeaker": 1, "nClasses": 1, "num_eval": 1, "n_mels": 1,
           "nOut": 1, "weight_decay": 0, "checkpoint_minutes": 0, "nonfinite_limit": 1, "nproc": 0, "gpu_id": 0}
POSITIVE = ("lr", "lr_decay", "scale")


def str2bool(value) -> bool:
    """Parse true/false/1/0/yes/no (any case); unlike the original's type=bool, 'False' is False."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "t", "yes", "y", "on"):
        return True
    if text in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, 1/0, yes/no), got '{value}'")


def add_flag(group, name: str, kind, default, help_text: str) -> None:
    """Add --name; booleans work bare (--augment) or with a value (--augment false)."""
    if kind is bool:
        group.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default, metavar="BOOL",
                           help=help_text)
    else:
        group.add_argument(f"--{name}", type=kind, default=default, help=help_text)


FLAG_GROUPS = {
    "Data loader": [
        ("max_frames", int, 200, "training crop length in 10 ms frames"),
        ("eval_frames", int, 300, "test crop length in frames; 0 uses whole utterances"),
        ("batch_size", int, 200, "speakers per batch, per process"),
        ("max_seg_per_spk", int, 500, "maximum utterances per speaker per epoch"),
        ("nDataLoaderThread", int, 5, "DataLoader worker processes (train and test)"),
        ("augment", bool, False, "online MUSAN/RIR augmentation"),
        ("seed", int, 10, "seed of the sampler, crops and augmentation"),
        ("skip_bad_audio", bool, False, "replace unreadable training files by another of the same speaker "
                                        "(counted) instead of stopping"),
    ],
    "Training": [
        ("test_interval", int, 10, "evaluate and save every N epochs (also the StepLR step size)"),
        ("max_epoch", int, 500, "last epoch (inclusive)"),
        ("trainfunc", str, "", "loss plug-in in loss/"),
    ],
    "Optimizer and scheduler": [
        ("optimizer", str, "adam", "optimizer plug-in in optimizer/"),
        ("scheduler", str, "steplr", "scheduler plug-in in scheduler/"),
        ("lr", float, 0.001, "learning rate"),
        ("lr_decay", float, 0.95, "StepLR decay factor"),
        ("weight_decay", float, 0, "weight decay"),
    ],
    "Loss functions": [
        ("hard_prob", float, 0.5, "triplet: probability of a hard negative"),
        ("hard_rank", int, 10, "triplet: hard negative drawn from the top hard_rank+1"),
        ("margin", float, 0.1, "margin of amsoftmax, aamsoftmax and triplet"),
        ("scale", float, 30, "scale of amsoftmax and aamsoftmax"),
        ("easy_margin", bool, False, "aamsoftmax: easy-margin variant"),
        ("nPerSpeaker", int, 1, "utterances per speaker in each batch item (metric losses need 2 or more)"),
        ("nClasses", int, 5994, "number of training speakers for classification losses"),
    ],
    "Evaluation": [
        ("dcf_p_target", float, 0.05, "MinDCF target prior (MinDCF at 0.01 is printed too)"),
        ("dcf_c_miss", float, 1, "MinDCF miss cost"),
        ("dcf_c_fa", float, 1, "MinDCF false-alarm cost"),
        ("num_eval", int, 10, "crops per test file"),
        ("scoring", str, "original", "original (minus mean crop distance) or cosine (mean normalised embedding)"),
        ("score_file", str, "", "--eval: write '<score> <enrol> <test>' per trial to this file (plots beside it)"),
    ],
    "Load and save": [
        ("initial_model", str, "", "weights to start from (takes precedence over resuming)"),
        ("save_path", str, "exps/exp1", "experiment folder (model/ and result/ inside)"),
    ],
    "Training and test data": [
        ("train_list", str, "data/train_list.txt", "train list: '<speaker> <relative path>' lines"),
        ("test_list", str, "data/veri_test.txt", "trial list(s), comma-separated: '<label> <enrol> <test>' lines"),
        ("train_path", str, "data/voxceleb2/dev/wav", "root of the train list's paths"),
        ("test_path", str, "data/voxceleb1/test/wav", "root of the trial list's paths"),
        ("musan_path", str, "data/musan_split", "split MUSAN folder"),
        ("rir_path", str, "data/RIRS_NOISES/simulated_rirs", "simulated RIR folder"),
    ],
    "Model definition": [
        ("n_mels", int, 40, "mel filterbank channels"),
        ("log_input", bool, False, "log of the mel power"),
        ("model", str, "", "model plug-in in models/"),
        ("encoder_type", str, "SAP", "pooling: SAP, ASP (ResNets), TAP, MAX (VGGVox)"),
        ("nOut", int, 512, "embedding size"),
        ("sinc_stride", int, 10, "RawNet3 sinc-conv stride"),
        ("res2net_scale", int, 4, "Res2NetSE34: channel groups per block (2, 4, 8, 16 or 32)"),
    ],
    "Run mode and hardware": [
        ("eval", bool, False, "evaluate only, then exit"),
        ("port", str, "8888", "MASTER_PORT for distributed training"),
        ("distributed", bool, False, "one process per visible GPU (DistributedDataParallel)"),
        ("mixedprec", bool, False, "float16 autocast + grad scaler on CUDA; bfloat16 on CPUs with fast bfloat16"),
        ("device", str, "auto", "auto (CUDA when available), cpu or cuda"),
        ("gpu_id", int, 0, "GPU to use when not distributed (sets CUDA_VISIBLE_DEVICES)"),
        ("nproc", int, 0, "--distributed without torchrun: processes to start (0: one per visible GPU, "
                          "2 on CPU, gloo)"),
        ("checkpoint_minutes", float, 0, "also save the training state every N minutes inside an epoch "
                                         "(model/resume.model); 0: only at the end of each epoch"),
        ("nonfinite_limit", int, 20, "stop after this many training steps in a row with a non-finite loss"),
        ("debug", bool, False, "show the Python traceback of an error instead of one line (also SPEAKERNET_DEBUG=1)"),
    ],
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are ConfigErrors (one line, exit status 1) instead of a usage dump."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The command line: the original's flags and defaults, plus ours."""
    parser = ArgumentParser(description="SpeakerNet: train or evaluate speaker-embedding networks")
    parser.add_argument("--config", type=str, default=None, help="YAML file whose keys override the flags")
    for title, flags in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        for name, kind, default, help_text in flags:
            add_flag(group, name, kind, default, help_text)
    evaluation.add_evaluation_arguments(parser)
    return parser


def flags_given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options that appear on the command line."""
    given = set()
    for token in argv:
        if token.startswith("--"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is not None:
                given.add(action.dest)
    return given


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, config_path: str,
                 given: set[str]) -> None:
    """YAML values win over the command line, cast with each flag's type (the original's semantics)."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle) or {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read --config {config_path}: {getattr(error, 'strerror', None) or error}")
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {config_path} is not valid YAML: {' '.join(str(error).split())}")
    if not isinstance(content, dict):
        raise ConfigError(f"--config {config_path}: expected 'key: value' lines, found a {type(content).__name__}")
    actions = {action.dest: action for action in parser._actions}
    for key, value in content.items():
        if key not in actions or key == "config":
            warnings.warn(f"Ignored unknown parameter '{key}' in {config_path}", stacklevel=2)
            continue
        cast = actions[key].type
        if key in LIST_KEYS and isinstance(value, list) and all(isinstance(item, str) for item in value):
            value = ",".join(value)
        try:
            if isinstance(value, (list, dict)):
                raise TypeError(f"a YAML {type(value).__name__}")
            value = value if value is None or cast is None else cast(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            type_name = "bool" if cast is str2bool else getattr(cast, "__name__", str(cast))
            raise ConfigError(f"--config {config_path}: key '{key}' has value {value!r}, "
                              f"which is not a valid {type_name}") from None
        if key in given and getattr(args, key) != value:
            warnings.warn(f"--{key} {getattr(args, key)} from the command line is overridden by "
                          f"{config_path} ({key}: {value}); using {value}", stacklevel=2)
        setattr(args, key, value)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, then the YAML file, then the runtime paths the original adds."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        apply_config(parser, args, args.config, flags_given(parser, argv))
    check_ranges(args)
    args.model_save_path = os.path.join(args.save_path, "model")
    args.result_save_path = os.path.join(args.save_path, "result")
    args.feat_save_path = ""
    args.gpu = 0
    return args


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse numeric values no run can use (e.g. --max_frames 0, --batch_size 0, --lr -1)."""
    for name, low in MINIMUM.items():
        if getattr(args, name) < low:
            raise ConfigError(f"--{name} must be at least {low}, got {getattr(args, name)}")
    for name in POSITIVE:
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name} must be above 0, got {getattr(args, name)}")
    if not 0 <= args.hard_prob <= 1:
        raise ConfigError(f"--hard_prob is a probability (0 to 1), got {args.hard_prob}")
    for name in ("dcf_p_target", "calibration_prior"):
        if not 0 < getattr(args, name) < 1:
            raise ConfigError(f"--{name} is a prior strictly between 0 and 1, got {getattr(args, name)}")


def resolved_config(args: argparse.Namespace) -> dict:
    """The configuration as YAML-able values, loadable again with --config."""
    return {key: value for key, value in vars(args).items() if key not in RUNTIME_KEYS}
