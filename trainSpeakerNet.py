#!/usr/bin/env python
"""Train or evaluate a speaker-embedding network: flags + YAML -> Settings -> checks -> train or --eval."""
from __future__ import annotations

import os
import random
import sys
from dataclasses import replace

import numpy as np
import torch

import DatasetLoader
import evaluation
from arguments import parse_settings
from audio.reading import check_crop_lengths
from loss.LossHelpers import check_classes, check_per_speaker
from runtime import checkpoint_files, distributed
from runtime.device import choose_gpus, place_on, resolve_device
from runtime.errors import ConfigError, DataError, MissingFileError, run_command
from settings.plugins import load_plugin
from settings.sections import RunSettings, Settings
from SpeakerNet import SpeakerNet, WrappedModel
from training.trainer import ModelTrainer


def seed_everything(seed: int) -> None:
    """Seed the generators of the main process, so the same --seed builds the same initial network."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def main_worker(context: distributed.Context, settings: Settings) -> None:
    """Build the model and trainer for this process, then evaluate or train."""
    run = settings.run
    device = resolve_device(run.device)
    if context.distributed:
        if device.type == "cuda":
            device = torch.device("cuda", context.local_rank)
            torch.cuda.set_device(device)
        distributed.init_process_group(context, device, run.port)
    seed_everything(run.seed)
    speaker_net = place_on(SpeakerNet(**{**settings.flags, "device": str(device)}), device)
    check_crop_lengths(getattr(speaker_net.__S__, "min_samples", 0), settings.data.max_frames,
                       settings.evaluation.eval_frames, settings.model.model)
    if context.distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            speaker_net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    else:
        wrapped = WrappedModel(speaker_net)
    finished = False
    try:
        trainer = ModelTrainer.from_settings(wrapped, settings, device, context)
        if run.eval:
            trainer.evaluate()
        else:
            trainer.fit()
        finished = True
    finally:
        if context.distributed:
            distributed.leave_process_group(finished)


def prepare_save_path(run: RunSettings) -> None:
    """Refuse a --save_path that cannot hold the run; create model/ and result/ for training."""
    for path in (run.save_path, run.model_save_path, run.result_save_path):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"--save_path: {path} is a file; give a folder (it holds model/ and result/)")
    if run.eval:
        return
    try:
        os.makedirs(run.model_save_path, exist_ok=True)
        os.makedirs(run.result_save_path, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"Cannot create --save_path {run.save_path}: {error.strerror}") from None
    for path in (run.model_save_path, run.result_save_path):
        if not os.access(path, os.W_OK):
            raise ConfigError(f"--save_path: cannot write to {path}; choose a folder you can write to")


def check_inputs(settings: Settings, main: bool = True) -> Settings:
    """Everything the user gave that can be checked before any process starts or any model is built; returns the
    settings to run with (a loss that classifies speakers may switch to the shuffled sampler).

    `main` is False on the other ranks of a torchrun job: the files only rank 0 reads (save path, checkpoints,
    calibration) are checked there; every node checks the data it reads itself."""
    run, model, optimisation = settings.run, settings.model, settings.optimisation
    for folder, name in (("models", model.model), ("loss", model.trainfunc), ("optimizer", optimisation.optimizer),
                         ("scheduler", optimisation.scheduler)):
        load_plugin(folder, name)
    if main and run.initial_model and not os.path.isfile(run.initial_model):
        raise MissingFileError(f"--initial_model {run.initial_model} does not exist")
    if run.eval:
        if main and not run.initial_model and not checkpoint_files.has_training_state(run.model_save_path):
            raise MissingFileError(f"--eval needs --initial_model or a checkpoint in {run.model_save_path}")
        evaluation.check_inputs(settings.evaluation, main)
        if main:
            evaluation.check_outputs(settings.evaluation, [("--initial_model", run.initial_model),
                                                           ("--config", run.config)])
        return settings
    loss = load_plugin("loss", model.trainfunc)
    check_per_speaker(model.trainfunc, loss, model.nPerSpeaker)
    classifies = getattr(loss, "classifies_speakers", False)
    DatasetLoader.check_sampler(settings.data, model.trainfunc, classifies)
    speakers, data = DatasetLoader.check_training_data(settings.data, distributed.planned_world_size(run), classifies)
    if data.sampler != settings.data.sampler:
        if main:
            print(f"{data.train_list} has fewer speakers with --nPerSpeaker {data.nPerSpeaker} utterances than "
                  f"--batch_size {data.batch_size}: loss '{model.trainfunc}' classifies speakers, so batches come from "
                  "--sampler shuffled (a speaker may appear more than once in a batch)")
        settings = replace(settings, data=data, flags={**settings.flags, "sampler": data.sampler})
    check_classes(model.trainfunc, loss, model.nClasses, speakers,
                  settings.data.train_shards or settings.data.train_list)
    if settings.data.augment:
        DatasetLoader.check_augmentation_data(settings.data.musan_path, settings.data.rir_path,
                                              settings.data.augment_mix)
    if optimisation.test_interval > optimisation.max_epoch:
        if main:
            print(f"--test_interval {optimisation.test_interval} is beyond --max_epoch {optimisation.max_epoch}: no "
                  "validation will run, so no trial list is read")
        return settings
    during_training = replace(settings.evaluation, test_list=settings.evaluation.test_list[:1], score_file="",
                              fit_calibration="", embeddings_cache="")
    trials = evaluation.check_inputs(during_training, main)[0][0]
    if len(set(trials.labels[trials.labels >= 0].tolist())) < 2:
        raise DataError(f"{trials.path}: evaluation during training needs target (1) and non-target (0) trials")
    return settings


def run(argv: list[str]) -> int:
    """Parse and check everything, then train or evaluate in one process or several."""
    settings = parse_settings(argv)
    distributed.check_launch(settings.run.distributed)
    visible, device = choose_gpus(settings.run.device, settings.run.gpu_id, settings.run.distributed,
                                  os.environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    settings = replace(settings, run=replace(settings.run, device=device))
    resolve_device(device)
    print(f"Python {sys.version.split()[0]}, PyTorch {torch.__version__}, "
          f"{torch.cuda.device_count()} GPU(s), save path {settings.run.save_path}")
    main = distributed.launch_rank() == 0  # only rank 0 reads and writes the save path
    if main:
        prepare_save_path(settings.run)
    settings = check_inputs(settings, main)
    distributed.start(main_worker, settings, settings.run)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
