"""ModelTrainer (the original's name): the one object that owns a training run.

Built from a run's settings it reads its training data; `fit` runs the epochs: it starts from the run's newest state
or --initial_model, trains each epoch step by step, validates and saves every --test_interval epochs, keeps the
checkpoints the retention policy names and honours stop requests (signals, the checkpoint timer); `evaluate` is
--eval. A recipe changes a run by overriding the hooks `compute_loss` (the loss call of one step), `log_epoch` (what
is logged after an epoch) and `validate` (what is validated)."""
from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.nn as nn
from tqdm import tqdm

import DatasetLoader
import evaluation
from runtime import atomic_files, checkpoint_files, distributed, loader_workers, training_state
from runtime.checkpoint_retention import Retention, remove_unkept_checkpoints
from runtime.device import autocast_dtype
from runtime.errors import DataError, MissingFileError
from runtime.run_control import RunControl
from runtime.training_state import EpochTotals, Recoverables, ResumePoint
from settings.plugins import PluginError, build_plugin
from settings.sections import RunSettings, Settings
from training.epoch_meter import EpochMeter, NonFiniteLossError
from training.mixing import Mixing
from training.parameters import batchnorm_buffers, batchnorm_layers, parameter_groups, scale_learning_rates
from training.run_log import initial_model_summary, log_line, log_timing, write_run_record


class ModelTrainer:
    """Trains a wrapped SpeakerNet, validates it on a trial list and saves/loads its checkpoints.

    The keyword arguments are every flag, as the original passes them: the optimizer and scheduler plug-ins
    receive their part's (settings.plugins.plugin_arguments), with the learning rates scaled by --lr_reference_batch
    for the `context`'s processes, and the scheduler `steps_per_epoch` (the batches of one process in an epoch).
    `record` is the configuration saved with each checkpoint (those flags as given when not given).

    `settings`, the run's (see `from_settings`), are what `fit`, `evaluate` and `validate` work from; a training
    run's data is read here, and the scheduler's `steps_per_epoch` is then that data's. Without them the trainer
    only steps, saves and loads (the original's API)."""

    def __init__(self, speaker_model: nn.Module, optimizer: str, scheduler: str, mixedprec: bool,
                 device: torch.device, nonfinite_limit: int = 20, precision: torch.dtype | None = None,
                 record: dict | None = None, context: distributed.Context = distributed.Context(),
                 steps_per_epoch: int = 1, settings: Settings | None = None, **kwargs):
        self.__model__ = speaker_model
        self.mixing = Mixing(kwargs.get("mix", "none"), kwargs.get("mix_alpha", 0.2), kwargs.get("mix_prob", 1.0),
                             kwargs.get("mix_domain", "wave"))
        loss = speaker_model.module.__L__
        self.mixing.check_loss(type(loss).__module__.rsplit(".", 1)[-1], getattr(loss, "classifies_speakers", False))
        self.mixed_front_end = self.mixing.feature_front_end(speaker_model.module.model_settings["model"],
                                                             speaker_model.module.__S__)
        self.device = device
        self.context = context
        self.settings = settings
        self.dataset = self.sampler = None
        if settings is not None and not settings.run.eval:
            self.dataset, self.sampler = DatasetLoader.training_data(settings.data, context.rank, context.world_size)
            steps_per_epoch = DatasetLoader.steps_per_epoch(self.sampler, settings.data)
        self.backbone_lr_factor = kwargs.get("backbone_lr_factor", 1.0)
        self.group_factors = {name: kwargs.get(name, 1.0)
                              for name in ("backbone_lr_factor", "encoder_lr_factor", "layer_decay")}
        self.backbone_frozen = False
        # what trains when the backbone is not frozen (a frozen ssl encoder or LoRA's base weights stay frozen)
        self.backbone_trainable = [parameter.requires_grad for parameter in speaker_model.module.__S__.parameters()]
        self.record = kwargs if record is None else record
        kwargs, self.lr_scaling = scale_learning_rates(kwargs, scheduler, context.world_size)
        groups = parameter_groups(speaker_model.module, kwargs["lr"], *self.group_factors.values())
        self.__optimizer__ = build_plugin("optimizer", optimizer, kwargs, groups)
        scheduler_flags = {**kwargs, "steps_per_epoch": steps_per_epoch}
        self.__scheduler__, self.lr_step = build_plugin("scheduler", scheduler, scheduler_flags, self.__optimizer__)
        if self.lr_step not in ("epoch", "iteration"):
            raise PluginError(f"Scheduler '{scheduler}' returned lr_step '{self.lr_step}'; "
                              "expected 'epoch' or 'iteration'")
        self.autocast_dtype = precision if precision is not None else autocast_dtype(device, mixedprec)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        self.nonfinite_limit = nonfinite_limit
        self.last_epoch: dict = {}

    @classmethod
    def from_settings(cls, speaker_model: nn.Module, settings: Settings, device: torch.device,
                      context: distributed.Context = distributed.Context()) -> ModelTrainer:
        """The trainer of a run: its optimisation settings, its flags (to the plug-ins and the checkpoints) and,
        when it trains, its training data."""
        optimisation, own = settings.optimisation, ("optimizer", "scheduler", "mixedprec", "device", "nonfinite_limit")
        return cls(speaker_model, optimisation.optimizer, optimisation.scheduler, optimisation.mixedprec, device,
                   optimisation.nonfinite_limit, record=settings.flags, context=context, settings=settings,
                   **{key: value for key, value in settings.flags.items() if key not in own})

    # The run: epochs, validation, checkpoints and stop requests.

    def fit(self) -> None:
        """The epoch loop: train, log, every --test_interval epochs validate and save, save each of the last
        --save_last_epochs epochs (rank 0 writes), then remove the checkpoints --keep_last and --keep_best let go."""
        if self.dataset is None:
            raise RuntimeError("fit() needs a trainer built from a training run's settings (from_settings)")
        settings, dataset, sampler = self.settings, self.dataset, self.sampler
        run, optimisation, is_main = settings.run, settings.optimisation, self.context.is_main
        point = self.start_point(run)
        if is_main:
            if self.lr_scaling:
                print(self.lr_scaling)
            print(f"Training from epoch {point.first_epoch} with {self.learning_rates()}")
        control = RunControl(run.checkpoint_minutes)
        control.install_signal_handlers()  # before the run record, which tells a waiting job the run has started
        if is_main:
            write_run_record(settings)
        resume_path = os.path.join(run.model_save_path, checkpoint_files.RESUME_NAME)
        retention = Retention(optimisation.keep_last, optimisation.keep_best, optimisation.max_epoch,
                              optimisation.save_last_epochs)
        with open(os.path.join(run.result_save_path, "scores.txt"), "a", encoding="utf-8") as scorefile:
            for epoch in range(point.first_epoch, optimisation.max_epoch + 1):
                self.freeze_for_epoch(epoch, optimisation.freeze_backbone_epochs, is_main)
                sampler.set_epoch(epoch)
                dataset.set_epoch(epoch)
                first = epoch == point.first_epoch
                loader = DatasetLoader.epoch_loader(dataset, sampler, settings.data, point.skip_steps if first else 0)
                result = self.train_network(loader, is_main, control, point.totals if first else None, epoch,
                                            resume_path)
                if result is None:
                    print(f"Stopped by signal {control.signal_received}; run the same command again to continue.")
                    return
                if is_main:
                    self.log_epoch(scorefile, epoch, *result, run.result_save_path)
                    if dataset.stats.summary():
                        print(f"Training data so far: {dataset.stats.summary()}")
                self.save_epoch(epoch, scorefile, retention, resume_path)
                if control.poll(self.device)[1]:
                    print(f"Stopped by a signal after epoch {epoch}; run the same command again to continue.")
                    return

    def start_point(self, run: RunSettings) -> ResumePoint:
        """Continue this run from its own newest state; a new run starts from --initial_model or from scratch.

        Rank 0 reads the files and sends them to the other ranks, so only its disk needs the save path."""
        context = self.context
        state = distributed.from_main(lambda: checkpoint_files.latest_state(run.model_save_path))
        if state is not None:
            point = self.resume(*state, rank=context.rank, world_size=context.world_size)
            if context.is_main:
                print(f"Resumed from {state[0]}; continuing with epoch {point.first_epoch}"
                      + (f" after its first {point.skip_steps} batches" if point.skip_steps else "")
                      + (f" (--initial_model {run.initial_model} was where this run started)"
                         if run.initial_model else ""))
            return point
        if run.initial_model:
            content = distributed.from_main(lambda: checkpoint_files.read_checkpoint(run.initial_model))
            report = self.loadParameters(run.initial_model, content=content)
            if context.is_main:
                print(initial_model_summary(report, self.__model__.module, run.initial_model))
        return ResumePoint()

    def save_epoch(self, epoch: int, scorefile, retention: Retention, resume_path: str) -> None:
        """After an epoch: validate and save on --test_interval, save the last --save_last_epochs, always the resume
        state; then (rank 0, once all is on disk) remove the checkpoints the retention policy lets go."""
        optimisation, is_main = self.settings.optimisation, self.context.is_main
        stem = os.path.join(self.settings.run.model_save_path, f"model{epoch:09d}")
        if epoch % optimisation.test_interval == 0:
            eer, min_dcf = self.validate()
            if is_main:
                log_line(scorefile, f"Epoch {epoch:d}, VEER {eer:2.4f}, MinDCF {min_dcf:2.5f}")
            self.saveParameters(stem + ".model", epoch, write=is_main)
            if is_main:
                atomic_files.write_text(stem + ".eer", f"{eer:2.4f}")
        elif epoch > optimisation.max_epoch - optimisation.save_last_epochs:
            self.saveParameters(stem + ".model", epoch, write=is_main)
        self.saveParameters(resume_path, epoch, write=is_main)
        if is_main:
            remove_unkept_checkpoints(stem + ".model", retention)

    def freeze_for_epoch(self, epoch: int, frozen_epochs: int, verbose: bool) -> None:
        """--freeze_backbone_epochs: the embedding model is frozen in epochs 1 to N, and trains from N + 1 on."""
        frozen = epoch <= frozen_epochs
        if frozen != self.backbone_frozen:
            self.freeze_backbone(frozen)
            if verbose:
                print(f"Epoch {epoch}: " + (f"the embedding model is frozen until the end of epoch {frozen_epochs}; "
                                            "only the loss head trains" if frozen
                                            else "the embedding model trains too"))

    # Hooks a recipe may override.

    def compute_loss(self, data: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, prec1) of one batch [speakers, per_speaker, samples] (called under autocast); with --mix, of the
        batch mixed across its utterances (waveforms or, with --mix_domain feature, features) against both labels."""
        with self.mixing.mixed(data, label, self.mixed_front_end) as (data, mix):
            return self.__model__(data, label, mix=mix)

    def log_epoch(self, scorefile, epoch: int, loss: float, prec1: float, result_save_path: str) -> None:
        """Rank 0, after each epoch: the original's scores.txt line, and where the epoch's time went."""
        log_line(scorefile, f"Epoch {epoch:d}, TEER/TAcc {prec1:2.2f}, TLOSS {loss:f}, LR {self.last_epoch['lr']:f}",
                 " \n")
        log_timing(result_save_path, epoch, self.last_epoch)

    def validate(self) -> tuple[float, float] | tuple[None, None]:
        """(EER, MinDCF at --dcf_p_target) on the first --test_list, on rank 0 (every rank embeds)."""
        settings = self.settings
        first_list = settings.evaluation.test_list[0]
        results = evaluation.run_evaluation(self, replace(settings.evaluation, test_list=(first_list,),
                                                          score_file="", fit_calibration=""))
        if not results:
            return None, None
        result = results[first_list]
        if "eer" not in result:
            raise DataError(f"{first_list}: evaluation during training needs target and non-target trials")
        return result["eer"], result["min_dcf"][settings.evaluation.dcf_p_target][0]

    # One epoch, step by step.

    def train_network(self, loader, verbose: bool, control: RunControl | None = None,
                      totals: EpochTotals | None = None, epoch: int = 1, resume_path: str = ""
                      ) -> tuple[float, float] | None:
        """One epoch (or its rest) over `loader`; (mean loss, mean prec1), or None when stopped by a signal. A save
        request of `control` writes the training state so far to `resume_path` (if given)."""
        self.train_mode()
        meter = EpochMeter(totals or EpochTotals(lr=self.current_lr()), len(loader), self.device)
        bar = tqdm(total=meter.last_step, initial=meter.totals.steps, disable=not verbose, unit="batch",
                   dynamic_ncols=True, leave=False)
        with bar, loader_workers.batches(loader) as batches:  # both closed on errors too
            for data, data_label in batches:
                meter.arrived()
                self.set_progress(epoch - 1 + meter.totals.steps / meter.last_step)
                data = data.to(self.device, non_blocking=True)  # [speakers, per_speaker, samples]
                label = torch.as_tensor(data_label, dtype=torch.long).to(self.device, non_blocking=True)
                meter.count(*self.train_step(data, label), samples=data.shape[0] * data.shape[1])
                if meter.in_a_row >= self.nonfinite_limit:
                    raise NonFiniteLossError(f"{meter.in_a_row} training steps in a row had a non-finite loss or "
                                             "gradient; stopping. The checkpoints already saved are intact; try a "
                                             "lower --lr or check the data.")
                if self.lr_step == "iteration":
                    self.__scheduler__.step()
                bar.update(1)
                if verbose and (meter.totals.steps % 10 == 0 or meter.totals.steps == meter.last_step):
                    bar.set_postfix_str(meter.progress())
                if control is not None and meter.totals.steps < meter.last_step:  # the same steps on every rank
                    save, stop = control.poll(self.device)
                    if save and resume_path:
                        self.save_partial_epoch(resume_path, epoch, meter.current_totals())
                    if stop:
                        return None
                meter.waiting()
        if self.lr_step == "epoch":
            self.__scheduler__.step()
        self.last_epoch = meter.timing()
        return meter.means()

    def save_partial_epoch(self, path: str, epoch: int, totals: EpochTotals) -> None:
        """The training state after `totals.steps` batches of `epoch`, to `path` (rank 0 writes)."""
        self.saveParameters(path, epoch - 1, totals, write=self.context.is_main)
        if self.context.is_main:
            print(f"Saved the training state after {totals.steps} batches of epoch {epoch} to {path}")

    def train_step(self, data: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Forward, backward and optimizer step on a [speakers, per_speaker, samples] batch; a step whose loss or
        gradients are not finite leaves no trace (weights, optimizer state and BatchNorm statistics as before)."""
        self.__model__.zero_grad(set_to_none=True)
        statistics = [buffer.clone() for buffer in batchnorm_buffers(self.__model__)]
        with self.autocast():
            nloss, prec1 = self.compute_loss(data, label)
        self.scaler.scale(nloss).backward()
        if self.scaler.is_enabled():  # the scaler skips non-finite steps itself and lowers its scale
            scale = self.scaler.get_scale()
            self.scaler.step(self.__optimizer__)
            self.scaler.update()
            finite = self.scaler.get_scale() >= scale
        else:
            grads = [p.grad for p in self.__model__.parameters() if p.grad is not None]
            finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads) + nloss.detach()).item())
            if finite:
                self.__optimizer__.step()
        if not finite:
            with torch.no_grad():
                for buffer, saved in zip(batchnorm_buffers(self.__model__), statistics):
                    buffer.copy_(saved)
        return nloss.detach().float(), torch.as_tensor(prec1).detach().float().reshape(-1)[0], finite

    def autocast(self):
        """The autocast context for forward passes (a no-op when training in float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def freeze_backbone(self, frozen: bool) -> None:
        """Freeze the embedding model `__S__` (no gradients, BatchNorm statistics kept) so that only the loss head
        trains, or release it."""
        self.backbone_frozen = frozen
        for parameter, trainable in zip(self.__model__.module.__S__.parameters(), self.backbone_trainable):
            parameter.requires_grad_(trainable and not frozen)

    def train_mode(self) -> None:
        """Training mode, with the BatchNorm layers of a frozen embedding model in eval mode."""
        self.__model__.train()
        if self.backbone_frozen:
            for layer in batchnorm_layers(self.__model__.module.__S__):
                layer.eval()

    def set_progress(self, epochs: float) -> None:
        """Tell a loss with a schedule (e.g. a margin that grows) how many epochs of training are done."""
        loss = self.__model__.module.__L__
        if hasattr(loss, "set_epoch_progress"):
            loss.set_epoch_progress(epochs)

    def current_lr(self) -> float:
        """The learning rate of the loss head's parameter group (the last one), which the log shows."""
        return self.__optimizer__.param_groups[-1]["lr"]

    def learning_rates(self) -> str:
        """The current learning rates in words: the head's, and the embedding model's when it has its own group."""
        head = f"learning rate {self.current_lr():g}"
        if len(self.__optimizer__.param_groups) == 1:
            return head
        groups = self.__optimizer__.param_groups
        text = f"{head} for the loss head, {groups[-2]['lr']:g} for the embedding model"
        if len(groups) > 2:
            text += f", {groups[0]['lr']:g} to {groups[-3]['lr']:g} for the encoder's layers"
        factors = ", ".join(f"--{name} {value:g}" for name, value in self.group_factors.items() if value != 1)
        return f"{text} ({factors})"

    # Checkpoints and the original's evaluation call.

    def recoverables(self) -> Recoverables:
        """What a checkpoint of this trainer saves besides the random states and progress."""
        return Recoverables(self.__model__.module, self.__optimizer__, self.__scheduler__, self.scaler)

    def saveParameters(self, path: str, epoch: int = 0, totals: EpochTotals | None = None,
                       write: bool = True) -> None:
        """Write a resumable checkpoint atomically (every rank calls it; `write` is True on the one that writes)."""
        payload = training_state.training_payload(self.recoverables(), epoch, totals, self.record)
        if write:
            checkpoint_files.write_atomically(payload, path)

    def loadParameters(self, path: str, strict_model: bool = False, content: dict | None = None
                       ) -> checkpoint_files.LoadReport:
        """Load model weights (any accepted format). With strict_model every `__S__` tensor must fit, else at
        least half of them must (a checkpoint of another network is an error, a new loss head is not)."""
        content = checkpoint_files.read_checkpoint(path) if content is None else content
        model = self.__model__.module
        report = checkpoint_files.load_weights(model, checkpoint_files.model_weights(content, path), path)
        print(report.text())
        if strict_model and (report.missing_in("__S__.") or report.mismatched_in("__S__.")):
            raise checkpoint_files.CheckpointError(
                f"Checkpoint {path} does not fit the model built from the flags (see the list above); "
                "check --model, --encoder_type, --n_mels, --nOut and --log_input")
        checkpoint_files.check_mostly_fits(report, model, path)
        return report

    def evaluate(self) -> None:
        """--eval: load the weights to evaluate, then score every --test_list (embeddings from every rank)."""
        self.load_for_evaluation(self.settings.run)
        if self.context.is_main:
            print(f"Total parameters: {sum(p.numel() for p in self.__model__.module.__S__.parameters())}")
        evaluation.run_evaluation(self, self.settings.evaluation)

    def load_for_evaluation(self, run: RunSettings) -> None:
        """--eval: the weights of --initial_model, else of the newest checkpoint in --save_path (all must fit)."""
        def read() -> tuple[str, dict]:
            if run.initial_model:
                return run.initial_model, checkpoint_files.read_checkpoint(run.initial_model)
            state = checkpoint_files.latest_state(run.model_save_path)
            if state is None:
                raise MissingFileError(f"--eval needs --initial_model or a checkpoint in {run.model_save_path}")
            return state

        path, content = distributed.from_main(read)
        self.loadParameters(path, strict_model=True, content=content)

    def resume(self, path: str, content: dict, rank: int = 0, world_size: int = 1) -> ResumePoint:
        """Restore model, optimizer, scheduler, scaler and this rank's RNG states from a checkpoint read from `path`."""
        saved = content.get("args") or {}
        for name, factor in self.group_factors.items():
            saved_factor = saved.get(name, 1.0)
            if "optimizer_state_dict" in content and saved_factor != factor:
                raise checkpoint_files.CheckpointError(
                    f"{path} was trained with --{name} {saved_factor:g}; continue with that value, or start "
                    f"a new run in another --save_path with --initial_model {path}")
        return training_state.restore_training(self.recoverables(), path, content, rank, world_size)

    def evaluateFromList(self, test_list: str, test_path: str, nDataLoaderThread: int, eval_frames: int,
                         num_eval: int = 10, scoring: str = "original", **kwargs):
        """The original's API: (scores, labels, trial lines) of one trial list, embedded by every rank."""
        from evaluation.pipeline import scores_of_list  # the evaluation back end only for this legacy call

        return scores_of_list(self.__model__.module, test_list, test_path, eval_frames, num_eval, nDataLoaderThread,
                              scoring, self.device, self.autocast_dtype, self.context)
