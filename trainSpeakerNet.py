#!/usr/bin/env python
"""Train or evaluate a speaker-embedding network: flags + YAML -> Settings -> checks -> train or --eval."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

import DatasetLoader
import evaluation
from arguments import parse_settings, resolved_config
from audio.reading import check_crop_lengths
from loss.LossHelpers import check_classes, check_per_speaker
from runtime import atomic_files, checkpoint_files, distributed
from runtime.checkpoint_retention import Retention, remove_unkept_checkpoints
from runtime.device import choose_gpus, place_on, resolve_device
from runtime.errors import ConfigError, DataError, MissingFileError, run_command
from runtime.plugins import load_plugin
from runtime.run_control import RunControl
from runtime.training_state import ResumePoint
from settings.sections import RunSettings, Settings
from SpeakerNet import ModelTrainer, SpeakerNet, WrappedModel

PROJECT_ROOT = Path(__file__).resolve().parent
SNAPSHOT_SKIPS = {".venv", "tests", "benchmarks", "data", "exps"}  # folders not copied into the run's code snapshot


def write_run_record(settings: Settings) -> None:
    """Snapshot of the code (.zip), the flags (.cmd) and the resolved config (config.yaml) of the run."""
    stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    result_path = settings.run.result_save_path
    with zipfile.ZipFile(os.path.join(result_path, f"run{stamp}.zip"), "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(PROJECT_ROOT.rglob("*.py")):
            relative = path.relative_to(PROJECT_ROOT)
            if not SNAPSHOT_SKIPS & set(relative.parts):
                bundle.write(path, relative.as_posix())
    flags = argparse.Namespace(**settings.flags)
    atomic_files.write_text(os.path.join(result_path, f"run{stamp}.cmd"), str(flags))
    atomic_files.write_text(os.path.join(settings.run.save_path, "config.yaml"),
                            yaml.safe_dump(resolved_config(flags), sort_keys=False))


def evaluate(trainer: ModelTrainer, settings: Settings) -> tuple[float, float] | tuple[None, None]:
    """Evaluate during training on the first --test_list: (EER, MinDCF at --dcf_p_target) on rank 0."""
    first_list = settings.evaluation.test_list[0]
    results = evaluation.run_evaluation(trainer, replace(settings.evaluation, test_list=(first_list,), score_file="",
                                                         fit_calibration=""))
    if not results:
        return None, None
    result = results[first_list]
    if "eer" not in result:
        raise DataError(f"{first_list}: evaluation during training needs target and non-target trials")
    return result["eer"], result["min_dcf"][settings.evaluation.dcf_p_target][0]


def log_line(scorefile, line: str, end: str = "\n") -> None:
    """Print a timestamped line and append it to result/scores.txt in the original's format."""
    print(time.strftime("%Y-%m-%d %H:%M:%S"), line, flush=True)
    scorefile.write(line + end)
    scorefile.flush()


def log_timing(result_save_path: str, epoch: int, timing: dict) -> None:
    """Print where the epoch's time went and append it (with the LR) to result/timing.jsonl."""
    print(f"Epoch {epoch} took {timing['seconds']:.1f} s: data wait {100 * timing['data_wait_share']:.1f}%, "
          f"{timing['samples_per_second']:.1f} samples/s, {timing['nonfinite_steps']} non-finite steps skipped")
    with open(os.path.join(result_save_path, "timing.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"epoch": epoch, **timing}) + "\n")


def start_point(trainer: ModelTrainer, run: RunSettings, context: distributed.Context) -> ResumePoint:
    """Continue this run from its own newest state; a new run starts from --initial_model or from scratch.

    Rank 0 reads the files and sends them to the other ranks, so only its disk needs the save path."""
    state = distributed.from_main(lambda: checkpoint_files.latest_state(run.model_save_path))
    if state is not None:
        point = trainer.resume(*state, rank=context.rank, world_size=context.world_size)
        if context.is_main:
            print(f"Resumed from {state[0]}; continuing with epoch {point.first_epoch}"
                  + (f" after its first {point.skip_steps} batches" if point.skip_steps else "")
                  + (f" (--initial_model {run.initial_model} was where this run started)"
                     if run.initial_model else ""))
        return point
    if run.initial_model:
        content = distributed.from_main(lambda: checkpoint_files.read_checkpoint(run.initial_model))
        report = trainer.loadParameters(run.initial_model, content=content)
        if context.is_main:
            print(initial_model_summary(report, trainer.__model__.module, run.initial_model))
    return ResumePoint()


def initial_model_summary(report: checkpoint_files.LoadReport, net: SpeakerNet, path: str) -> str:
    """One line on what a new run takes from --initial_model: the embedding model, the loss head, or both."""
    parts = []
    for prefix, name in (("__S__.", "the embedding model (__S__)"), ("__L__.", "the loss head (__L__)")):
        own = [key for key in net.state_dict() if key.startswith(prefix)]
        loaded = [key for key in report.loaded if key.startswith(prefix)]
        if not own:
            continue  # a loss without parameters or buffers
        if not loaded:
            parts.append(f"{name} starts fresh")
        elif len(loaded) == len(own):
            parts.append(f"{name} is loaded from it ({len(own)} tensors)")
        else:
            parts.append(f"{name} takes {len(loaded)} of its {len(own)} tensors from it, the rest start fresh")
    return f"Starting from {path}: " + "; ".join(parts)


def train(trainer: ModelTrainer, settings: Settings, context: distributed.Context, dataset, sampler) -> None:
    """The epoch loop: train, log, every test_interval epochs evaluate and save, and save each of the last
    --save_last_epochs epochs (rank 0 writes), then remove the checkpoints --keep_last and --keep_best let go."""
    run, data, optimisation = settings.run, settings.data, settings.optimisation
    point = start_point(trainer, run, context)
    if context.is_main:
        if trainer.lr_scaling:
            print(trainer.lr_scaling)
        print(f"Training from epoch {point.first_epoch} with {trainer.learning_rates()}")
    control = RunControl(run.checkpoint_minutes)
    control.install_signal_handlers()
    resume_path = os.path.join(run.model_save_path, checkpoint_files.RESUME_NAME)
    retention = Retention(optimisation.keep_last, optimisation.keep_best, optimisation.max_epoch,
                          optimisation.save_last_epochs)
    if context.is_main:
        write_run_record(settings)
    with open(os.path.join(run.result_save_path, "scores.txt"), "a", encoding="utf-8") as scorefile:
        for epoch in range(point.first_epoch, optimisation.max_epoch + 1):
            freeze_for_epoch(trainer, epoch, optimisation.freeze_backbone_epochs, context.is_main)
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            skip = point.skip_steps if epoch == point.first_epoch else 0
            totals = point.totals if epoch == point.first_epoch else None

            def save_state(partial, current=epoch):
                trainer.saveParameters(resume_path, current - 1, partial, write=context.is_main)
                if context.is_main:
                    print(f"Saved the training state after {partial.steps} batches of epoch {current} to {resume_path}")

            result = trainer.train_network(DatasetLoader.epoch_loader(dataset, sampler, data, skip), context.is_main,
                                           control, totals, save_state, epoch)
            if result is None:
                print(f"Stopped by signal {control.signal_received}; run the same command again to continue.")
                return
            loss, traineer = result
            if context.is_main:
                log_line(scorefile, f"Epoch {epoch:d}, TEER/TAcc {traineer:2.2f}, TLOSS {loss:f}, "
                                    f"LR {trainer.last_epoch['lr']:f}", " \n")
                log_timing(run.result_save_path, epoch, trainer.last_epoch)
                if dataset.stats.summary():
                    print(f"Training data so far: {dataset.stats.summary()}")
            stem = os.path.join(run.model_save_path, f"model{epoch:09d}")
            if epoch % optimisation.test_interval == 0:
                eer, min_dcf = evaluate(trainer, settings)
                if context.is_main:
                    log_line(scorefile, f"Epoch {epoch:d}, VEER {eer:2.4f}, MinDCF {min_dcf:2.5f}")
                trainer.saveParameters(stem + ".model", epoch, write=context.is_main)
                if context.is_main:
                    atomic_files.write_text(stem + ".eer", f"{eer:2.4f}")
            elif epoch > optimisation.max_epoch - optimisation.save_last_epochs:
                trainer.saveParameters(stem + ".model", epoch, write=context.is_main)
            trainer.saveParameters(resume_path, epoch, write=context.is_main)
            if context.is_main:
                remove_unkept_checkpoints(stem + ".model", retention)
            if control.poll(trainer.device)[1]:
                print(f"Stopped by a signal after epoch {epoch}; run the same command again to continue.")
                return


def freeze_for_epoch(trainer: ModelTrainer, epoch: int, frozen_epochs: int, verbose: bool) -> None:
    """--freeze_backbone_epochs: the embedding model is frozen in epochs 1 to N, and trains from N + 1 on."""
    frozen = epoch <= frozen_epochs
    if frozen != trainer.backbone_frozen:
        trainer.freeze_backbone(frozen)
        if verbose:
            print(f"Epoch {epoch}: " + (f"the embedding model is frozen until the end of epoch {frozen_epochs}; only "
                                        "the loss head trains" if frozen else "the embedding model trains too"))


def seed_everything(seed: int) -> None:
    """Seed the generators of the main process, so the same --seed builds the same initial network."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def load_for_evaluation(trainer: ModelTrainer, run: RunSettings) -> None:
    """--eval: the weights of --initial_model, else of the newest checkpoint in --save_path (all must fit)."""
    def read() -> tuple[str, dict]:
        if run.initial_model:
            return run.initial_model, checkpoint_files.read_checkpoint(run.initial_model)
        state = checkpoint_files.latest_state(run.model_save_path)
        if state is None:
            raise MissingFileError(f"--eval needs --initial_model or a checkpoint in {run.model_save_path}")
        return state

    path, content = distributed.from_main(read)
    trainer.loadParameters(path, strict_model=True, content=content)


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
    try:
        if run.eval:
            trainer = ModelTrainer.from_settings(wrapped, settings.optimisation, device, settings.flags, context)
            load_for_evaluation(trainer, run)
            if context.is_main:
                print(f"Total parameters: {sum(p.numel() for p in speaker_net.__S__.parameters())}")
            evaluation.run_evaluation(trainer, settings.evaluation)
        else:
            dataset, sampler = DatasetLoader.training_data(settings.data, context.rank, context.world_size)
            trainer = ModelTrainer.from_settings(wrapped, settings.optimisation, device, settings.flags, context,
                                                 DatasetLoader.steps_per_epoch(sampler, settings.data))
            train(trainer, settings, context, dataset, sampler)
    finally:
        if context.distributed:
            torch.distributed.destroy_process_group()


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
