"""SpeakerNet, the embedding model and its training loss, and ModelTrainer, which trains and saves it."""
from __future__ import annotations

import time

import torch
import torch.nn as nn
from tqdm import tqdm

import DatasetLoader
from models.Fbanks import frontend_settings
from runtime import checkpoint_files, distributed, training_state
from runtime.device import autocast_dtype
from runtime.errors import DataError, UserError
from runtime.plugins import PluginError, available_plugins, build_plugin, plugin_arguments, plugin_module
from runtime.run_control import RunControl
from runtime.training_state import EpochTotals, Recoverables, ResumePoint


class SpeakerNet(nn.Module):
    """The embedding model `__S__` and the training loss `__L__` (the original's state_dict keys).

    The keyword arguments are flags (all of them, as the original passes them, or some); each plug-in receives its
    part's (runtime.plugins.plugin_arguments). `optimizer` is accepted for the original's signature and not used."""

    def __init__(self, model: str, optimizer: str = "", trainfunc: str = "", nPerSpeaker: int = 1, **kwargs):
        super().__init__()
        self.__S__ = build_plugin("models", model, kwargs)
        check_frontend_flags(model, self.__S__, kwargs)
        self.__L__ = build_plugin("loss", trainfunc, {**kwargs, "nPerSpeaker": nPerSpeaker})
        self.nPerSpeaker = nPerSpeaker
        # What shapes the embeddings besides the weights: the model's arguments, less the device it runs on.
        arguments = plugin_arguments("models", model, kwargs)
        self.model_settings = {"model": model, **{name: value for name, value in arguments.items() if name != "device"}}

    def forward(self, data: torch.Tensor, label: torch.Tensor | None = None):
        """Without a label: embeddings [N, nOut] of waveforms [N, samples]. With labels: waveforms
        [speakers, per_speaker, samples] (or [speakers, samples]) -> the loss of embeddings [speakers,
        per_speaker, nOut], as (loss, prec1)."""
        if label is None:
            return self.__S__(data.reshape(-1, data.shape[-1]))
        batch = data if data.dim() == 3 else data.unsqueeze(1)
        speakers, per_speaker = batch.shape[:2]
        embeddings = self.__S__(batch.reshape(speakers * per_speaker, -1)).reshape(speakers, per_speaker, -1)
        if per_speaker == 1 and not hasattr(self.__L__, "min_per_speaker"):  # a loss written for the original
            embeddings = embeddings.squeeze(1)
        return self.__L__(embeddings, label)


def frontend_models() -> list[str]:
    """The model plug-ins that take the front-end flags (their network class has `takes_frontend`)."""
    return [name for name in available_plugins("models")
            if any(isinstance(value, type) and getattr(value, "takes_frontend", False)
                   for value in vars(plugin_module("models", name)).values())]


def check_frontend_flags(model: str, network: nn.Module, flags: dict) -> None:
    """Refuse --frontend (other than logmel) and its options for a model that computes its own features."""
    given = {name: value for name, value in frontend_settings(flags).items()
             if value is not None and (name, value) != ("frontend", "logmel")}
    if given and not getattr(network, "takes_frontend", False):
        name, value = next(iter(given.items()))
        raise PluginError(f"--{name} {value}: {model} computes its own features; the front-end flags apply to "
                          f"{', '.join(frontend_models())}")


class WrappedModel(nn.Module):
    """Gives a single-process model the `.module` attribute that DDP models have."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, x, label=None):
        return self.module(x, label)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of `model`."""
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The running statistics of every BatchNorm layer (updated by each training forward pass)."""
    return [buffer for module in batchnorm_layers(model)
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked) if buffer is not None]


def parameter_groups(net: SpeakerNet, lr: float, backbone_lr_factor: float) -> list[dict]:
    """The optimiser's parameter groups: all parameters in one, or with a --backbone_lr_factor other than 1 the
    embedding model's at lr times the factor, then the loss head's at lr (the last group is always the head's)."""
    if backbone_lr_factor == 1:
        return [{"params": list(net.parameters())}]
    return [{"params": list(net.__S__.parameters()), "lr": lr * backbone_lr_factor},
            {"params": list(net.__L__.parameters())}]


def scale_learning_rates(flags: dict, scheduler: str, processes: int) -> tuple[dict, str]:
    """--lr_reference_batch N: (the flags with --lr and the scheduler plug-in's LR_OPTIONS multiplied by processes x
    --batch_size x --nPerSpeaker / N, as wespeaker's scale_ratio does with N = 64, and a line saying so); with N 0
    the flags unchanged and ''."""
    reference = flags.get("lr_reference_batch", 0)
    if not reference:
        return flags, ""
    batch, per_speaker = flags["batch_size"], flags["nPerSpeaker"]
    factor = processes * batch * per_speaker / reference
    plugin = plugin_module("scheduler", scheduler)
    given = {"lr": flags["lr"], **{name: flags.get(name, plugin.OPTIONS[name][1])
                                   for name in getattr(plugin, "LR_OPTIONS", ())}}
    scaled = {name: value * factor for name, value in given.items()}
    changes = ", ".join(f"--{name} {given[name]:g} -> {value:g}" for name, value in scaled.items())
    return {**flags, **scaled}, (f"Learning rates scaled by processes {processes} x --batch_size {batch} x "
                                 f"--nPerSpeaker {per_speaker} / --lr_reference_batch {reference} = {factor:g}: "
                                 f"{changes}")


class NonFiniteLossError(UserError, RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradient."""


class EpochMeter:
    """Running sums of one epoch (resumable through EpochTotals) and where its time went."""

    def __init__(self, totals: EpochTotals, batches: int, device: torch.device):
        self.totals = totals
        self.last_step = totals.steps + batches
        self.loss_sum = torch.tensor(totals.loss_sum, device=device)  # summed on the device: no per-step sync
        self.prec_sum = torch.tensor(totals.prec_sum, device=device)
        self.in_a_row, self.samples, self.data_wait = 0, 0, 0.0
        self.started = self.waiting_since = time.perf_counter()

    def arrived(self) -> None:
        """A batch came out of the loader."""
        self.data_wait += time.perf_counter() - self.waiting_since

    def waiting(self) -> None:
        """The step is done; waiting for the next batch."""
        self.waiting_since = time.perf_counter()

    def count(self, loss: torch.Tensor, prec1: torch.Tensor, finite: bool, samples: int) -> None:
        """Add one step (a non-finite one counts apart and lengthens the run of them)."""
        self.totals.steps += 1
        self.samples += samples
        if finite:
            self.loss_sum += loss
            self.prec_sum += prec1
            self.in_a_row = 0
        else:
            self.totals.nonfinite += 1
            self.in_a_row += 1

    def current_totals(self) -> EpochTotals:
        """The sums so far, to save in a mid-epoch checkpoint."""
        totals = self.totals
        return EpochTotals(totals.lr, totals.steps, self.loss_sum.item(), self.prec_sum.item(), totals.nonfinite)

    def progress(self) -> str:
        """The progress bar's text: mean loss and accuracy so far, speed and data-wait share."""
        elapsed = time.perf_counter() - self.started
        good = max(1, self.totals.steps - self.totals.nonfinite)
        return (f"Loss {self.loss_sum.item() / good:.5f} TEER/TAcc {self.prec_sum.item() / good:2.3f}% - "
                f"{self.samples / elapsed:.2f} Hz, data wait {100 * self.data_wait / elapsed:.0f}%")

    def means(self) -> tuple[float, float]:
        """(mean loss, mean prec1) over the epoch's finite steps."""
        good = self.totals.steps - self.totals.nonfinite
        if self.totals.steps == 0:
            raise DataError("The epoch had no training step: the train list has fewer speakers with --nPerSpeaker "
                            "utterances than --batch_size")
        if good == 0:
            raise NonFiniteLossError(f"All {self.totals.steps} training steps of the epoch had a non-finite loss or "
                                     "gradient; try a lower --lr or check the data")
        return self.loss_sum.item() / good, self.prec_sum.item() / good

    def timing(self) -> dict:
        """Where the epoch's time went, for the log and result/timing.jsonl."""
        elapsed = time.perf_counter() - self.started
        return {"lr": self.totals.lr, "seconds": elapsed, "data_wait_seconds": self.data_wait,
                "data_wait_share": self.data_wait / elapsed, "samples_per_second": self.samples / elapsed,
                "nonfinite_steps": self.totals.nonfinite}


class ModelTrainer:
    """Trains a wrapped SpeakerNet, evaluates it on trial lists and saves/loads its checkpoints.

    The keyword arguments are every flag, as the original passes them: the optimizer and scheduler plug-ins
    receive their part's (runtime.plugins.plugin_arguments), with the learning rates scaled by --lr_reference_batch
    for the `context`'s processes, and the scheduler `steps_per_epoch` (the batches of one process in an epoch).
    `record` is the configuration saved with each checkpoint (those flags as given when not given)."""

    def __init__(self, speaker_model: nn.Module, optimizer: str, scheduler: str, mixedprec: bool,
                 device: torch.device, nonfinite_limit: int = 20, precision: torch.dtype | None = None,
                 record: dict | None = None, context: distributed.Context = distributed.Context(),
                 steps_per_epoch: int = 1, **kwargs):
        self.__model__ = speaker_model
        self.device = device
        self.context = context
        self.backbone_lr_factor = kwargs.get("backbone_lr_factor", 1.0)
        self.backbone_frozen = False
        self.record = kwargs if record is None else record
        kwargs, self.lr_scaling = scale_learning_rates(kwargs, scheduler, context.world_size)
        groups = parameter_groups(speaker_model.module, kwargs["lr"], self.backbone_lr_factor)
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
    def from_settings(cls, speaker_model: nn.Module, optimisation, device: torch.device, flags: dict,
                      context: distributed.Context, steps_per_epoch: int = 1) -> ModelTrainer:
        """The trainer of the optimisation settings; `flags` (every flag) go to the plug-ins and the checkpoints."""
        own = ("optimizer", "scheduler", "mixedprec", "device", "nonfinite_limit")
        return cls(speaker_model, optimisation.optimizer, optimisation.scheduler, optimisation.mixedprec, device,
                   optimisation.nonfinite_limit, record=flags, context=context, steps_per_epoch=steps_per_epoch,
                   **{key: value for key, value in flags.items() if key not in own})

    def autocast(self):
        """The autocast context for forward passes (a no-op when training in float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train_step(self, data: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Forward, backward and optimizer step on a [speakers, per_speaker, samples] batch; a step whose loss or
        gradients are not finite leaves no trace (weights, optimizer state and BatchNorm statistics as before)."""
        self.__model__.zero_grad(set_to_none=True)
        statistics = [buffer.clone() for buffer in batchnorm_buffers(self.__model__)]
        with self.autocast():
            nloss, prec1 = self.__model__(data, label)
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

    def freeze_backbone(self, frozen: bool) -> None:
        """Freeze the embedding model `__S__` (no gradients, BatchNorm statistics kept) so that only the loss head
        trains, or release it."""
        self.backbone_frozen = frozen
        for parameter in self.__model__.module.__S__.parameters():
            parameter.requires_grad_(not frozen)

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

    def train_network(self, loader, verbose: bool, control: RunControl | None = None,
                      totals: EpochTotals | None = None, save_state=None, epoch: int = 1) -> tuple[float, float] | None:
        """One epoch (or its rest) over `loader`; (mean loss, mean prec1), or None when stopped by a signal."""
        self.train_mode()
        meter = EpochMeter(totals or EpochTotals(lr=self.current_lr()), len(loader), self.device)
        bar = tqdm(total=meter.last_step, initial=meter.totals.steps, disable=not verbose, unit="batch",
                   dynamic_ncols=True, leave=False)
        with bar, DatasetLoader.batches(loader) as batches:  # both closed on errors too
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
                    if save and save_state is not None:
                        save_state(meter.current_totals())
                    if stop:
                        return None
                meter.waiting()
        if self.lr_step == "epoch":
            self.__scheduler__.step()
        self.last_epoch = meter.timing()
        return meter.means()

    def evaluateFromList(self, test_list: str, test_path: str, nDataLoaderThread: int, eval_frames: int,
                         num_eval: int = 10, scoring: str = "original", **kwargs):
        """The original's API: (scores, labels, trial lines) of one trial list, embedded by every rank."""
        from evaluation.pipeline import scores_of_list  # the evaluation back end only for this legacy call

        return scores_of_list(self.__model__.module, test_list, test_path, eval_frames, num_eval, nDataLoaderThread,
                              scoring, self.device, self.autocast_dtype, self.context)

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

    def resume(self, path: str, content: dict, rank: int = 0, world_size: int = 1) -> ResumePoint:
        """Restore model, optimizer, scheduler, scaler and this rank's RNG states from a checkpoint read from `path`."""
        saved_factor = (content.get("args") or {}).get("backbone_lr_factor", 1.0)
        if "optimizer_state_dict" in content and saved_factor != self.backbone_lr_factor:
            raise checkpoint_files.CheckpointError(
                f"{path} was trained with --backbone_lr_factor {saved_factor:g}; continue with that value, or start "
                f"a new run in another --save_path with --initial_model {path}")
        return training_state.restore_training(self.recoverables(), path, content, rank, world_size)

    def current_lr(self) -> float:
        """The learning rate of the loss head's parameter group (the last one), which the log shows."""
        return self.__optimizer__.param_groups[-1]["lr"]

    def learning_rates(self) -> str:
        """The current learning rates in words: the head's, and the embedding model's when it has its own group."""
        head = f"learning rate {self.current_lr():g}"
        if len(self.__optimizer__.param_groups) == 1:
            return head
        return (f"{head} for the loss head, {self.__optimizer__.param_groups[0]['lr']:g} for the embedding model "
                f"(--backbone_lr_factor {self.backbone_lr_factor:g})")
