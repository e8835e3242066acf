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
import zipfile

import numpy as np
import torch
import yaml

import DatasetLoader
import checkpoints
import distributed
import evaluation
from arguments import parse_arguments, resolved_config
from runtime import atomic_files
from runtime.errors import ConfigError, DataError, MissingFileError, run_command
from SpeakerNet import (ModelTrainer, ResumePoint, RunControl, SpeakerNet, WrappedModel, check_classes,
                        check_crop_lengths, check_per_speaker, choose_gpus, load_plugin, place_on, resolve_device)


def write_run_record(args: argparse.Namespace) -> None:
    """Snapshot of the top-level code (.zip), the Namespace (.cmd) and the resolved config (YAML)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    here = os.path.dirname(os.path.abspath(__file__))
    with zipfile.ZipFile(os.path.join(args.result_save_path, f"run{stamp}.zip"), "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(glob.glob(os.path.join(here, "*.py"))):
            bundle.write(path, os.path.basename(path))
    with open(os.path.join(args.result_save_path, f"run{stamp}.cmd"), "w", encoding="utf-8") as handle:
        handle.write(str(args))
    atomic_files.write_text(os.path.join(args.save_path, "config.yaml"),
                            yaml.safe_dump(resolved_config(args), sort_keys=False))


def evaluate(trainer: ModelTrainer, args: argparse.Namespace) -> tuple[float, float] | tuple[None, None]:
    """Evaluate during training on the first --test_list: (EER, MinDCF at --dcf_p_target) on rank 0."""
    first_list = evaluation.trial_list_paths(args.test_list)[0]
    settings = argparse.Namespace(**dict(vars(args), test_list=first_list, score_file="", fit_calibration=""))
    results = evaluation.run_evaluation(trainer, settings)
    if not results:
        return None, None
    result = results[first_list]
    if "eer" not in result:
        raise DataError(f"{first_list}: evaluation during training needs target and non-target trials")
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
    """The DataLoader of one epoch, starting after `skip_steps` batches.

    It gets its own generator: creating its iterator would otherwise draw from torch's global generator, and a
    resumed epoch (one iterator more) would continue with other random numbers than an uninterrupted one."""
    if skip_steps:
        sampler = ResumedSampler(sampler, skip_steps * args.batch_size)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.nDataLoaderThread,
                                       sampler=sampler, pin_memory=False, drop_last=True,
                                       worker_init_fn=DatasetLoader.worker_init_fn, generator=torch.Generator())


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


def start_point(trainer: ModelTrainer, args: argparse.Namespace, context: distributed.Context) -> ResumePoint:
    """Continue this run from its own newest state; a new run starts from --initial_model or from scratch.

    Rank 0 reads the files and sends them to the other ranks, so only its disk needs the save path."""
    state = distributed.from_main(lambda: checkpoints.latest_state(args.model_save_path))
    if state is not None:
        point = trainer.resume(*state, rank=context.rank, world_size=context.world_size)
        if context.is_main:
            print(f"Resumed from {state[0]}; continuing with epoch {point.first_epoch}"
                  + (f" after its first {point.skip_steps} batches" if point.skip_steps else "")
                  + (f" (--initial_model {args.initial_model} was where this run started)"
                     if args.initial_model else ""))
        return point
    if args.initial_model:
        content = distributed.from_main(lambda: checkpoints.read_checkpoint(args.initial_model))
        trainer.loadParameters(args.initial_model, content=content)
    return ResumePoint()


def train(trainer: ModelTrainer, args: argparse.Namespace, context: distributed.Context) -> None:
    """The epoch loop: train, log, and every test_interval epochs evaluate and save (rank 0 writes)."""
    dataset = DatasetLoader.train_dataset_loader(**dict(vars(args), check_files=False))  # checked before the start
    sampler = DatasetLoader.train_dataset_sampler(dataset, **dict(vars(args), rank=context.rank,
                                                                   world_size=context.world_size))
    point = start_point(trainer, args, context)
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
                trainer.saveParameters(resume_path, completed, partial, write=context.is_main)
                if context.is_main:
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
                trainer.saveParameters(stem + ".model", epoch, write=context.is_main)
                if context.is_main:
                    atomic_files.write_text(stem + ".eer", f"{eer:2.4f}")
            trainer.saveParameters(resume_path, epoch, write=context.is_main)
            if control.poll(trainer.device)[1]:
                print(f"Stopped by a signal after epoch {epoch}; run the same command again to continue.")
                return


def seed_everything(seed: int) -> None:
    """Seed the generators of the main process, so the same --seed builds the same initial network."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def load_for_evaluation(trainer: ModelTrainer, args: argparse.Namespace) -> None:
    """--eval: the weights of --initial_model, else of the newest checkpoint in --save_path (all must fit)."""
    def read() -> tuple[str, dict]:
        if args.initial_model:
            return args.initial_model, checkpoints.read_checkpoint(args.initial_model)
        state = checkpoints.latest_state(args.model_save_path)
        if state is None:
            raise MissingFileError(f"--eval needs --initial_model or a checkpoint in {args.model_save_path}")
        return state

    path, content = distributed.from_main(read)
    trainer.loadParameters(path, strict_model=True, content=content)


def main_worker(context: distributed.Context, args: argparse.Namespace) -> None:
    """Build the model and trainer for this process, then evaluate or train."""
    device = resolve_device(args.device)
    if context.distributed:
        if device.type == "cuda":
            device = torch.device("cuda", context.local_rank)
            torch.cuda.set_device(device)
        distributed.init_process_group(context, device, args.port)
    seed_everything(args.seed)
    speaker_net = place_on(SpeakerNet(**vars(args)), device)
    check_crop_lengths(speaker_net.__S__, args.max_frames, args.eval_frames, args.model)
    if context.distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            speaker_net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    else:
        wrapped = WrappedModel(speaker_net)
    trainer = ModelTrainer(wrapped, **dict(vars(args), device=device))
    try:
        if args.eval:
            load_for_evaluation(trainer, args)
            if context.is_main:
                print(f"Total parameters: {sum(p.numel() for p in speaker_net.__S__.parameters())}")
            evaluation.run_evaluation(trainer, args)
        else:
            train(trainer, args, context)
    finally:
        if context.distributed:
            torch.distributed.destroy_process_group()


def prepare_save_path(args: argparse.Namespace) -> None:
    """Refuse a --save_path that cannot hold the run; create model/ and result/ for training."""
    for path in (args.save_path, args.model_save_path, args.result_save_path):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"--save_path: {path} is a file; give a folder (it holds model/ and result/)")
    if args.eval:
        return
    try:
        os.makedirs(args.model_save_path, exist_ok=True)
        os.makedirs(args.result_save_path, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"Cannot create --save_path {args.save_path}: {error.strerror}") from None
    for path in (args.model_save_path, args.result_save_path):
        if not os.access(path, os.W_OK):
            raise ConfigError(f"--save_path: cannot write to {path}; choose a folder you can write to")


def check_inputs(args: argparse.Namespace) -> None:
    """Everything the user gave that can be checked before any process starts or any model is built."""
    for folder in ("models", "loss", "optimizer", "scheduler"):
        load_plugin(folder, {"models": args.model, "loss": args.trainfunc, "optimizer": args.optimizer,
                             "scheduler": args.scheduler}[folder])
    if args.initial_model and not os.path.isfile(args.initial_model):
        raise MissingFileError(f"--initial_model {args.initial_model} does not exist")
    if args.eval:
        if not args.initial_model and not checkpoints.saved_checkpoints(args.model_save_path) \
                and not os.path.exists(os.path.join(args.model_save_path, checkpoints.RESUME_NAME)):
            raise MissingFileError(f"--eval needs --initial_model or a checkpoint in {args.model_save_path}")
        evaluation.check_inputs(args)
        return
    loss = load_plugin("loss", args.trainfunc)
    check_per_speaker(args.trainfunc, loss, args.nPerSpeaker)
    world_size = distributed.planned_world_size(args)
    speakers = DatasetLoader.check_training_data(args, world_size)
    check_classes(args.trainfunc, loss, args.nClasses, speakers, args.train_list)
    if args.augment:
        DatasetLoader.check_augmentation_data(args.musan_path, args.rir_path)
    first_list = evaluation.trial_list_paths(args.test_list)[:1]
    during_training = argparse.Namespace(**dict(vars(args), test_list=",".join(first_list), score_file="",
                                                fit_calibration="", embeddings_cache=""))
    trials = evaluation.check_inputs(during_training)[0][0]
    if len(set(trials.labels[trials.labels >= 0].tolist())) < 2:
        raise DataError(f"{trials.path}: evaluation during training needs target (1) and non-target (0) trials")


def run(argv: list[str]) -> int:
    """Parse and check everything, then train or evaluate in one process or several."""
    args = parse_arguments(argv)
    distributed.check_launch(args.distributed)
    visible, args.device = choose_gpus(args.device, args.gpu_id, args.distributed,
                                       os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    resolve_device(args.device)
    print(f"Python {sys.version.split()[0]}, PyTorch {torch.__version__}, "
          f"{torch.cuda.device_count()} GPU(s), save path {args.save_path}")
    prepare_save_path(args)
    check_inputs(args)
    distributed.start(main_worker, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
