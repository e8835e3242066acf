#!/usr/bin/env python
"""Train or evaluate a speaker-embedding network: flags + YAML -> one args namespace -> train or --eval."""
from __future__ import annotations

import argparse
import datetime
import glob
import itertools
import json
import os
import random
import sys
import time
import warnings
import zipfile

import numpy as np
import torch
import yaml

import DatasetLoader
import evaluation
import checkpoints
import distributed
from SpeakerNet import (ModelTrainer, NonFiniteLossError, PluginError, ResumePoint, RunControl, SpeakerNet,
                        WrappedModel, check_per_speaker, resolve_device)

RUNTIME_KEYS = ("model_save_path", "result_save_path", "feat_save_path", "gpu", "config")


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
    ],
}


def build_parser() -> argparse.ArgumentParser:
    """The command line: the original's flags and defaults, plus ours."""
    parser = argparse.ArgumentParser(description="SpeakerNet: train or evaluate speaker-embedding networks")
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
    except OSError as error:
        raise SystemExit(f"Cannot read --config {config_path}: {error.strerror}")
    except yaml.YAMLError as error:
        raise SystemExit(f"--config {config_path} is not valid YAML: {error}")
    if not isinstance(content, dict):
        raise SystemExit(f"--config {config_path}: expected 'key: value' lines, found a {type(content).__name__}")
    actions = {action.dest: action for action in parser._actions}
    for key, value in content.items():
        if key not in actions or key == "config":
            warnings.warn(f"Ignored unknown parameter '{key}' in {config_path}", stacklevel=2)
            continue
        cast = actions[key].type
        try:
            value = value if value is None or cast is None else cast(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            type_name = "bool" if cast is str2bool else getattr(cast, "__name__", str(cast))
            raise SystemExit(f"--config {config_path}: key '{key}' has value {value!r}, "
                             f"which is not a valid {type_name}")
        if key in given and getattr(args, key) != value:
            warnings.warn(f"--{key} {getattr(args, key)} from the command line is overridden by "
                          f"{config_path} ({key}: {value})", stacklevel=2)
        setattr(args, key, value)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, then the YAML file, then the runtime paths the original adds."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        apply_config(parser, args, args.config, flags_given(parser, argv))
    args.model_save_path = os.path.join(args.save_path, "model")
    args.result_save_path = os.path.join(args.save_path, "result")
    args.feat_save_path = ""
    args.gpu = 0
    return args


def resolved_config(args: argparse.Namespace) -> dict:
    """The configuration as YAML-able values, loadable again with --config."""
    return {key: value for key, value in vars(args).items() if key not in RUNTIME_KEYS}


def write_run_record(args: argparse.Namespace) -> None:
    """Snapshot of the top-level code (.zip), the Namespace (.cmd) and the resolved config (YAML)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    here = os.path.dirname(os.path.abspath(__file__))
    with zipfile.ZipFile(os.path.join(args.result_save_path, f"run{stamp}.zip"), "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(glob.glob(os.path.join(here, "*.py"))):
            bundle.write(path, os.path.basename(path))
    with open(os.path.join(args.result_save_path, f"run{stamp}.cmd"), "w", encoding="utf-8") as handle:
        handle.write(str(args))
    temporary = os.path.join(args.save_path, "config.yaml.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        yaml.safe_dump(resolved_config(args), handle, sort_keys=False)
    os.replace(temporary, os.path.join(args.save_path, "config.yaml"))


def evaluate(trainer: ModelTrainer, args: argparse.Namespace) -> tuple[float, float] | tuple[None, None]:
    """Evaluate during training on the first --test_list: (EER, MinDCF at --dcf_p_target) on rank 0."""
    first_list = evaluation.trial_list_paths(args.test_list)[0]
    settings = argparse.Namespace(**dict(vars(args), test_list=first_list, score_file="", fit_calibration=""))
    results = evaluation.run_evaluation(trainer, settings)
    if not results:
        return None, None
    result = results[first_list]
    if "eer" not in result:
        raise SystemExit(f"{first_list}: evaluation during training needs target and non-target trials")
    return result["eer"], result["min_dcf"][args.dcf_p_target][0]


class ResumedSampler(torch.utils.data.Sampler):
    """An epoch's sampler items less the first `skip` ones (trained before a restart)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def epoch_loader(dataset, sampler, args: argparse.Namespace, skip_steps: int = 0):
    """The DataLoader of one epoch, starting after `skip_steps` batches."""
    if skip_steps:
        sampler = ResumedSampler(sampler, skip_steps * args.batch_size)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.nDataLoaderThread,
                                       sampler=sampler, pin_memory=False, drop_last=True,
                                       worker_init_fn=DatasetLoader.worker_init_fn)


def log_line(scorefile, line: str, end: str = "\n") -> None:
    """Print a timestamped line and append it to result/scores.txt in the original's format."""
    print(time.strftime("%Y-%m-%d %H:%M:%S"), line, flush=True)
    scorefile.write(line + end)
    scorefile.flush()


def log_timing(args: argparse.Namespace, epoch: int, timing: dict) -> None:
    """Print where the epoch's time went and append it (with the LR) to result/timing.jsonl."""
    print(f"Epoch {epoch} took {timing['seconds']:.1f} s: data wait {100 * timing['data_wait_share']:.1f}%, "
          f"{timing['samples_per_second']:.1f} samples/s, {timing['nonfinite_steps']} non-finite steps skipped")
    with open(os.path.join(args.result_save_path, "timing.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"epoch": epoch, **timing}) + "\n")


def train(trainer: ModelTrainer, args: argparse.Namespace, context: distributed.Context) -> None:
    """The epoch loop: train, log, and every test_interval epochs evaluate and save (rank 0 writes)."""
    check_per_speaker(args.trainfunc, trainer.__model__.module.__L__, args.nPerSpeaker)
    dataset = DatasetLoader.train_dataset_loader(**vars(args))
    sampler = DatasetLoader.train_dataset_sampler(dataset, **dict(vars(args), rank=context.rank,
                                                                   world_size=context.world_size))
    point = ResumePoint()
    if args.initial_model:
        trainer.loadParameters(args.initial_model)
    else:
        point = trainer.resume_latest(args.model_save_path)
    control = RunControl(args.checkpoint_minutes)
    control.install_signal_handlers()
    resume_path = os.path.join(args.model_save_path, checkpoints.RESUME_NAME)
    if context.is_main:
        write_run_record(args)
    with open(os.path.join(args.result_save_path, "scores.txt"), "a", encoding="utf-8") as scorefile:
        for epoch in range(point.first_epoch, args.max_epoch + 1):
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            skip = point.skip_steps if epoch == point.first_epoch else 0
            totals = point.totals if epoch == point.first_epoch else None

            def save_state(partial, completed=epoch - 1):
                if context.is_main:
                    trainer.saveParameters(resume_path, completed, partial)
                    print(f"Saved the training state after {partial.steps} batches of epoch {epoch} to {resume_path}")

            result = trainer.train_network(epoch_loader(dataset, sampler, args, skip), context.is_main, control,
                                           totals, save_state)
            if result is None:
                print(f"Stopped by signal {control.signal_received}; run the same command again to continue.")
                return
            loss, traineer = result
            if context.is_main:
                log_line(scorefile, f"Epoch {epoch:d}, TEER/TAcc {traineer:2.2f}, TLOSS {loss:f}, "
                                    f"LR {trainer.last_epoch['lr']:f}", " \n")
                log_timing(args, epoch, trainer.last_epoch)
                if dataset.stats.summary():
                    print(f"Training data so far: {dataset.stats.summary()}")
            if epoch % args.test_interval == 0:
                eer, min_dcf = evaluate(trainer, args)
                if context.is_main:
                    log_line(scorefile, f"Epoch {epoch:d}, VEER {eer:2.4f}, MinDCF {min_dcf:2.5f}")
                    stem = os.path.join(args.model_save_path, f"model{epoch:09d}")
                    trainer.saveParameters(stem + ".model", epoch)
                    with open(stem + ".eer", "w", encoding="utf-8") as handle:
                        handle.write(f"{eer:2.4f}")
            if context.is_main:
                trainer.saveParameters(resume_path, epoch)
            if control.poll(trainer.device)[1]:
                print(f"Stopped by a signal after epoch {epoch}; run the same command again to continue.")
                return


def seed_everything(seed: int) -> None:
    """Seed the generators of the main process, so the same --seed builds the same initial network."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def main_worker(context: distributed.Context, args: argparse.Namespace) -> None:
    """Build the model and trainer for this process, then evaluate or train."""
    device = resolve_device(args.device)
    if context.distributed:
        if device.type == "cuda":
            device = torch.device("cuda", context.local_rank)
            torch.cuda.set_device(device)
        distributed.init_process_group(context, device, args.port)
    seed_everything(args.seed)
    speaker_net = SpeakerNet(**vars(args)).to(device)
    if context.distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            speaker_net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    else:
        wrapped = WrappedModel(speaker_net)
    trainer = ModelTrainer(wrapped, **dict(vars(args), device=device))
    try:
        if args.eval:
            if args.initial_model:
                trainer.loadParameters(args.initial_model, strict_model=True)
            elif trainer.resume_latest(args.model_save_path).first_epoch == 1:
                raise SystemExit("--eval needs --initial_model or a checkpoint in " + args.model_save_path)
            if context.is_main:
                print(f"Total parameters: {sum(p.numel() for p in speaker_net.__S__.parameters())}")
            evaluation.run_evaluation(trainer, args)
        else:
            train(trainer, args, context)
    finally:
        if context.distributed:
            torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_arguments(argv)
    if not args.distributed and args.device != "cpu" and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu_id)
    print(f"Python {sys.version.split()[0]}, PyTorch {torch.__version__}, "
          f"{torch.cuda.device_count()} GPU(s), save path {args.save_path}")
    if not args.eval:
        os.makedirs(args.model_save_path, exist_ok=True)
        os.makedirs(args.result_save_path, exist_ok=True)
    try:
        distributed.start(main_worker, args)
    except (PluginError, checkpoints.CheckpointError, NonFiniteLossError) as error:
        raise SystemExit(f"Error: {error}")


if __name__ == "__main__":
    main()
