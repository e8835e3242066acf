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
from SpeakerNet import (ModelTrainer, NonFiniteLossError, PluginError, ResumePoint, RunControl, SpeakerNet,
                        WrappedModel, check_classes, check_per_speaker, place_on, resolve_device)

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
    check_classes(args.trainfunc, trainer.__model__.module.__L__, args.nClasses, len(dataset.speakers),
                  args.train_list)
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
    speaker_net = place_on(SpeakerNet(**vars(args)), device)
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
