"""SpeakerNet (model + loss), plug-in loading, and ModelTrainer (training, checkpoints, evaluation)."""
from __future__ import annotations

import importlib
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import checkpoints
import DatasetLoader
from AudioReader import crop_length
import distributed
import evaluation
from runtime.errors import ConfigError, DataError, UserError

PROJECT_ROOT = Path(__file__).resolve().parent
# Flags that shape the embedding model's output besides its weights (with the model's own OPTIONS).
MODEL_SETTINGS = ("n_mels", "log_input", "encoder_type", "nOut", "sinc_stride", "res2net_scale")
PLUGIN_KINDS = {  # folder -> (flag, attribute every plug-in must define)
    "models": ("--model", "MainModel"),
    "loss": ("--trainfunc", "LossFunction"),
    "optimizer": ("--optimizer", "Optimizer"),
    "scheduler": ("--scheduler", "Scheduler"),
}


class PluginError(UserError, ValueError):
    """An unknown plug-in name or a plug-in that cannot serve this run."""


def available_plugins(folder: str) -> list[str]:
    """Names of the plug-ins in `folder` (files that define the folder's entry point)."""
    attribute = PLUGIN_KINDS[folder][1]
    return [path.stem for path in sorted((PROJECT_ROOT / folder).glob("*.py"))
            if not path.stem.startswith("_") and attribute in path.read_text(encoding="utf-8")]


def load_plugin(folder: str, name: str):
    """The entry point (MainModel, LossFunction, Optimizer, Scheduler) of plug-in `folder/name.py`."""
    flag, attribute = PLUGIN_KINDS[folder]
    names = available_plugins(folder)
    if name not in names:
        given = f"'{name}'" if name else "nothing"
        raise PluginError(f"{flag} got {given}; available in {folder}/: {', '.join(names)}")
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    module = importlib.import_module(f"{folder}.{name}")
    return getattr(module, attribute)


def check_per_speaker(trainfunc: str, loss: nn.Module, nPerSpeaker: int) -> None:
    """Stop early when the loss cannot use `nPerSpeaker` utterances per speaker."""
    low = getattr(loss, "min_per_speaker", 1)
    high = getattr(loss, "max_per_speaker", None)
    if nPerSpeaker < low or (high is not None and nPerSpeaker > high):
        accepted = str(low) if low == high else f"{low} or more" if high is None else f"{low} to {high}"
        raise PluginError(f"Loss '{trainfunc}' needs --nPerSpeaker {accepted}, got {nPerSpeaker}")


def check_crop_lengths(model: nn.Module, max_frames: int, eval_frames: int, name: str) -> None:
    """Stop early when --max_frames or --eval_frames gives crops shorter than the model accepts."""
    minimum = getattr(model, "min_samples", 0)
    for flag, frames in (("max_frames", max_frames), ("eval_frames", eval_frames)):
        if frames and crop_length(frames) < minimum:
            raise ConfigError(f"--{flag} {frames} gives crops of {crop_length(frames)} samples, but {name} needs at "
                              f"least {minimum}; use --{flag} {math.ceil((minimum - crop_length(0)) / 160)} or more")


def build_plugin(folder: str, name: str, kwargs: dict) -> nn.Module:
    """Construct a plug-in; a setting it rejects (a ValueError) becomes a PluginError naming it."""
    factory = load_plugin(folder, name)
    try:
        return factory(**kwargs)
    except ValueError as error:
        raise PluginError(f"{folder}/{name}.py: {error}") from error


def check_classes(trainfunc: str, loss: nn.Module, nClasses: int, speakers: int, train_list: str) -> None:
    """Stop early when a classifying loss has fewer outputs than the train list has speakers (original's #158)."""
    if getattr(loss, "classifies_speakers", False) and nClasses < speakers:
        raise PluginError(f"Loss '{trainfunc}' has --nClasses {nClasses} outputs, fewer than the {speakers} "
                          f"speakers in {train_list}; set --nClasses {speakers}")


class SpeakerNet(nn.Module):
    """The embedding model `__S__` and the training loss `__L__` (the original's state_dict keys)."""

    def __init__(self, model: str, optimizer: str, trainfunc: str, nPerSpeaker: int, **kwargs):
        super().__init__()
        self.__S__ = build_plugin("models", model, kwargs)
        self.__L__ = build_plugin("loss", trainfunc, kwargs)
        self.nPerSpeaker = nPerSpeaker
        self.model_settings = {"model": model, **{name: kwargs[name] for name in MODEL_SETTINGS if name in kwargs}}

    def forward(self, data: torch.Tensor, label: torch.Tensor | None = None):
        """Embeddings `[N, nOut]` without a label, else (loss, prec1) of the loss."""
        data = data.reshape(-1, data.size()[-1])
        outp = self.__S__(data)
        if label is None:
            return outp
        outp = outp.reshape(self.nPerSpeaker, -1, outp.size()[-1]).transpose(1, 0).squeeze(1)
        return self.__L__(outp, label)


class WrappedModel(nn.Module):
    """Gives a single-process model the `.module` attribute that DDP models have."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, x, label=None):
        return self.module(x, label)


def choose_gpus(device: str, gpu_id: int, distributed: bool, visible: str | None) -> tuple[str | None, str]:
    """(value for CUDA_VISIBLE_DEVICES, or None to leave it; the --device to use), decided before CUDA starts.

    A single process uses one GPU: --gpu_id, or N of --device cuda:N. --distributed uses every visible GPU.
    When the user set CUDA_VISIBLE_DEVICES, it is left alone and cuda:N counts within those GPUs."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device not in ("auto", "cpu") and not match:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    index = match.group(1) if match else None
    if device == "cpu" or (visible is not None and not distributed):
        return None, device
    if distributed:
        if index is not None:
            raise ConfigError(f"--device {device} picks one GPU, but --distributed runs one process on every visible "
                              "GPU: choose the GPUs with CUDA_VISIBLE_DEVICES and pass --device cuda")
        return None, device
    if index is not None:
        if gpu_id not in (0, int(index)):
            raise ConfigError(f"--device {device} and --gpu_id {gpu_id} name different GPUs; give one of them")
        return index, "cuda"
    return str(gpu_id), device


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available; a CUDA device that PyTorch does not see is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was given but PyTorch sees no CUDA GPU; use --device cpu")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return chosen


def place_on(net: nn.Module, device: torch.device) -> nn.Module:
    """Move net to device; on a CPU its 4-D weights go channels_last, which makes the convolutions of an
    evaluation forward pass about 1.2x faster there (benchmarks/evaluation.py) and training no slower."""
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if device.type == "cpu" else net


def cpu_has_fast_bfloat16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has AMX or AVX512-BF16 units, where bfloat16 autocast is faster than float32.

    `cpuinfo` is the text of /proc/cpuinfo (read when not given; no such file means no)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(device: torch.device, mixedprec: bool) -> torch.dtype | None:
    """float16 on CUDA, bfloat16 on CPUs that run it fast, else None (float32)."""
    if not mixedprec:
        return None
    if device.type == "cuda":
        return torch.float16
    if cpu_has_fast_bfloat16():
        return torch.bfloat16
    print("--mixedprec: this CPU has no fast bfloat16 units, training in float32", file=sys.stderr)
    return None


def rng_states() -> dict:
    """Every random generator state, in types that torch.load(weights_only=True) accepts."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": position,
                        "has_gauss": has_gauss, "cached_gaussian": cached}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def cuda_states_to_restore(saved: list[torch.Tensor], visible: int) -> list[torch.Tensor]:
    """The saved per-GPU generator states that this machine's `visible` GPUs can take (GPU i gets state i).

    A run saved on more GPUs than are visible now restores the first ones and says so."""
    if len(saved) > visible:
        print(f"The checkpoint holds random states of {len(saved)} GPUs and {visible} are visible: "
              f"restoring the first {visible}", file=sys.stderr)
    return list(saved[:visible])


def restore_rng_states(states: dict) -> None:
    """Inverse of rng_states()."""
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        for index, state in enumerate(cuda_states_to_restore(states["cuda"], torch.cuda.device_count())):
            torch.cuda.set_rng_state(state, index)


def own_rng_states(content: dict, rank: int, world_size: int) -> dict | None:
    """The random states this rank saved (multi-process checkpoints keep one set per rank), or None."""
    per_rank = content.get("rank_rng_states")
    if per_rank is not None and len(per_rank) != world_size:
        print(f"The checkpoint holds the random states of {len(per_rank)} processes and this run has {world_size}: "
              "random draws after resuming differ from an uninterrupted run", file=sys.stderr)
    if per_rank is not None and rank < len(per_rank):
        return per_rank[rank]
    return content.get("rng_state") if rank == 0 else None


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The running statistics of every BatchNorm layer (updated by each training forward pass)."""
    return [buffer for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked) if buffer is not None]


@dataclass
class EpochTotals:
    """Running sums of one epoch, saved in mid-epoch checkpoints so a resumed epoch logs the same numbers."""

    lr: float = 0.0
    steps: int = 0
    loss_sum: float = 0.0
    prec_sum: float = 0.0
    nonfinite: int = 0


@dataclass
class ResumePoint:
    """Where training continues: first epoch, batches of it already done, and that epoch's totals."""

    first_epoch: int = 1
    skip_steps: int = 0
    totals: EpochTotals | None = None
    source: str = ""


@dataclass
class RunControl:
    """Requests between training steps: checkpoint on a timer, checkpoint and stop on SIGTERM/SIGINT."""

    checkpoint_minutes: float = 0.0
    signal_received: int | None = None
    last_save: float = field(default_factory=time.monotonic)

    def install_signal_handlers(self) -> None:
        """Record SIGTERM/SIGINT instead of dying, so the loop can checkpoint first."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._record)

    def _record(self, signum, frame) -> None:
        self.signal_received = signum

    def poll(self, device: torch.device) -> tuple[bool, bool]:
        """(save now, stop now), agreed over all ranks."""
        stop = self.signal_received is not None
        due = self.checkpoint_minutes > 0 and time.monotonic() - self.last_save >= 60 * self.checkpoint_minutes
        save, stop = distributed.any_rank([stop or due, stop], device)
        if save:
            self.last_save = time.monotonic()
        return save, stop


class NonFiniteLossError(UserError, RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradient."""


class ModelTrainer:
    """Trains a wrapped SpeakerNet, evaluates it on trial lists and saves/loads its checkpoints."""

    def __init__(self, speaker_model: nn.Module, optimizer: str, scheduler: str, mixedprec: bool,
                 device: torch.device, nonfinite_limit: int = 20, precision: torch.dtype | None = None, **kwargs):
        self.__model__ = speaker_model
        self.device = device
        self.__optimizer__ = load_plugin("optimizer", optimizer)(self.__model__.parameters(), **kwargs)
        self.__scheduler__, self.lr_step = load_plugin("scheduler", scheduler)(self.__optimizer__, **kwargs)
        if self.lr_step not in ("epoch", "iteration"):
            raise PluginError(f"Scheduler '{scheduler}' returned lr_step '{self.lr_step}'; "
                              "expected 'epoch' or 'iteration'")
        self.autocast_dtype = precision if precision is not None else autocast_dtype(device, mixedprec)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        self.nonfinite_limit = nonfinite_limit
        self.args = kwargs
        self.last_epoch: dict = {}

    def autocast(self):
        """The autocast context for forward passes (a no-op when training in float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train_step(self, data: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Forward, backward and optimizer step; a step whose loss or gradients are not finite leaves no trace
        (weights, optimizer state and BatchNorm statistics stay as they were)."""
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

    def train_network(self, loader, verbose: bool, control: RunControl | None = None,
                      totals: EpochTotals | None = None, save_state=None) -> tuple[float, float] | None:
        """One epoch (or its rest) over `loader`; (mean loss, mean prec1), or None when stopped by a signal."""
        self.__model__.train()
        totals = totals or EpochTotals(lr=self.current_lr())
        loss_sum = torch.tensor(totals.loss_sum, device=self.device)
        prec_sum = torch.tensor(totals.prec_sum, device=self.device)
        in_a_row, samples, data_wait, started = 0, 0, 0.0, time.perf_counter()
        last_step = totals.steps + len(loader)
        bar = tqdm(total=last_step, initial=totals.steps, disable=not verbose, unit="batch", dynamic_ncols=True,
                   leave=False)

        def current_totals() -> EpochTotals:
            return EpochTotals(totals.lr, totals.steps, loss_sum.item(), prec_sum.item(), totals.nonfinite)

        waiting_since = time.perf_counter()
        with bar, DatasetLoader.batches(loader) as batches:  # both closed on errors too
            for data, data_label in batches:
                data_wait += time.perf_counter() - waiting_since
                data = data.transpose(1, 0).to(self.device, non_blocking=True)
                label = torch.as_tensor(data_label, dtype=torch.long).to(self.device, non_blocking=True)
                nloss, prec1, finite = self.train_step(data, label)
                totals.steps += 1
                samples += data.shape[0] * data.shape[1]
                if finite:
                    loss_sum += nloss
                    prec_sum += prec1
                    in_a_row = 0
                else:
                    totals.nonfinite += 1
                    in_a_row += 1
                    if in_a_row >= self.nonfinite_limit:
                        raise NonFiniteLossError(f"{in_a_row} training steps in a row had a non-finite loss or "
                                                 "gradient; stopping. The checkpoints already saved are intact; "
                                                 "try a lower --lr or check the data.")
                if self.lr_step == "iteration":
                    self.__scheduler__.step()
                bar.update(1)
                if verbose and (totals.steps % 10 == 0 or totals.steps == last_step):
                    elapsed = time.perf_counter() - started
                    good = max(1, totals.steps - totals.nonfinite)
                    bar.set_postfix_str(f"Loss {loss_sum.item() / good:.5f} TEER/TAcc {prec_sum.item() / good:2.3f}% "
                                        f"- {samples / elapsed:.2f} Hz, data wait {100 * data_wait / elapsed:.0f}%")
                if control is not None and totals.steps < last_step:  # the same steps on every rank
                    save, stop = control.poll(self.device)
                    if save and save_state is not None:
                        save_state(current_totals())
                    if stop:
                        return None
                waiting_since = time.perf_counter()
        if self.lr_step == "epoch":
            self.__scheduler__.step()
        good = totals.steps - totals.nonfinite
        if totals.steps == 0:
            raise DataError("The epoch had no training step: the train list has fewer speakers with --nPerSpeaker "
                            "utterances than --batch_size")
        if good == 0:
            raise NonFiniteLossError(f"All {totals.steps} training steps of the epoch had a non-finite loss or "
                                     "gradient; try a lower --lr or check the data")
        elapsed = time.perf_counter() - started
        self.last_epoch = {"lr": totals.lr, "seconds": elapsed, "data_wait_seconds": data_wait,
                                  "data_wait_share": data_wait / elapsed, "samples_per_second": samples / elapsed,
                                  "nonfinite_steps": totals.nonfinite}
        return loss_sum.item() / good, prec_sum.item() / good

    def evaluateFromList(self, test_list: str, test_path: str, nDataLoaderThread: int, eval_frames: int,
                         num_eval: int = 10, scoring: str = "original", **kwargs):
        """Embed every file of a trial list (each rank its share) and score its trials on every rank.

        Returns (scores, labels, trials) like the original."""
        model = self.__model__.module
        model.eval()
        trials = evaluation.read_trials(test_list)
        evaluation.check_files_exist(trials.files, test_path)
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        share = trials.files[rank::world_size]
        embeddings = evaluation.extract_embeddings(model, share, test_path, eval_frames, num_eval,
                                                   nDataLoaderThread, self.device, self.autocast_dtype)
        embeddings = distributed.gather_dicts(embeddings)
        scores = evaluation.score_trials(trials, embeddings, bool(model.__L__.test_normalize), mode=scoring)
        pairs = [f"{enrol} {test}" for enrol, test in zip(trials.enrol, trials.test)]
        return scores, trials.labels, pairs

    def checkpoint_payload(self, epoch: int, totals: EpochTotals | None = None) -> dict:
        """Everything needed to resume exactly after `epoch` (+ the steps in `totals` of the next one).

        Readable by the original's HEAD loader (model weights under model_state_dict). In a multi-process run
        every rank must call it (the ranks' random states are gathered)."""
        payload = {"model_state_dict": self.__model__.module.state_dict(),
                   "optimizer_state_dict": self.__optimizer__.state_dict(),
                   "scheduler_state_dict": self.__scheduler__.state_dict(),
                   "scaler_state_dict": self.scaler.state_dict(),
                   "epoch": epoch, "rng_state": rng_states(), "format": checkpoints.FORMAT_TAG,
                   "args": {key: value for key, value in self.args.items()
                            if isinstance(value, (str, int, float, bool, type(None)))}}
        per_rank = distributed.gather_list(payload["rng_state"])
        if len(per_rank) > 1:
            payload["rank_rng_states"] = per_rank
        if totals is not None:
            payload["epoch_totals"] = asdict(totals)
        return payload

    def saveParameters(self, path: str, epoch: int = 0, totals: EpochTotals | None = None,
                       write: bool = True) -> None:
        """Write a resumable checkpoint atomically (every rank calls it; `write` is True on the one that writes)."""
        payload = self.checkpoint_payload(epoch, totals)
        if write:
            checkpoints.write_atomically(payload, path)

    def loadParameters(self, path: str, strict_model: bool = False, content: dict | None = None
                       ) -> checkpoints.LoadReport:
        """Load model weights (any accepted format). With strict_model every `__S__` tensor must fit, else at
        least half of them must (a checkpoint of another network is an error, a new loss head is not)."""
        content = checkpoints.read_checkpoint(path) if content is None else content
        report = self._load_model_weights(content, path)
        if strict_model and (report.missing_in("__S__.") or report.mismatched_in("__S__.")):
            raise checkpoints.CheckpointError(
                f"Checkpoint {path} does not fit the model built from the flags (see the list above); "
                "check --model, --encoder_type, --n_mels, --nOut and --log_input")
        checkpoints.check_mostly_fits(report, self.__model__.module, path)
        return report

    def _load_model_weights(self, content: dict, path: str) -> checkpoints.LoadReport:
        """Load the model weights of a checkpoint read from `path` and print what did not fit."""
        report = checkpoints.load_weights(self.__model__.module, checkpoints.model_weights(content, path), path)
        print(report.text())
        return report

    def resume(self, path: str, content: dict, rank: int = 0, world_size: int = 1) -> ResumePoint:
        """Restore model, optimizer, scheduler, scaler and this rank's RNG states from a checkpoint read from `path`."""
        self._load_model_weights(content, path)
        if "optimizer_state_dict" not in content:  # the original's bare state_dict: replay the scheduler
            epoch = checkpoints.epoch_of(path)
            for _ in range(epoch):
                self.__scheduler__.step()
            return ResumePoint(epoch + 1, source=path)
        self.__optimizer__.load_state_dict(content["optimizer_state_dict"])
        if "scheduler_state_dict" in content:
            self.__scheduler__.load_state_dict(content["scheduler_state_dict"])
        self._restore_scaler(content.get("scaler_state_dict") or {}, path)
        states = own_rng_states(content, rank, world_size)
        if states is not None:
            restore_rng_states(states)
        totals = EpochTotals(**content["epoch_totals"]) if "epoch_totals" in content else None
        return ResumePoint(int(content["epoch"]) + 1, totals.steps if totals else 0, totals, path)

    def _restore_scaler(self, saved: dict, path: str) -> None:
        """Load the gradient scaler's state when both the checkpoint and this run use float16 scaling."""
        if self.scaler.is_enabled() and saved:
            self.scaler.load_state_dict(saved)
        elif self.scaler.is_enabled():
            print(f"{path} was saved without float16 --mixedprec: the gradient scaler starts afresh")
        elif saved:
            print(f"{path} was saved with float16 --mixedprec and this run trains without it: its gradient "
                  "scaler state is not used")

    def current_lr(self) -> float:
        """The largest learning rate over the parameter groups."""
        return max(group["lr"] for group in self.__optimizer__.param_groups)
