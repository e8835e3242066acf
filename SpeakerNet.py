"""SpeakerNet (model + loss), plug-in loading, and ModelTrainer (training, checkpoints, evaluation)."""
from __future__ import annotations

import importlib
import os
import random
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
import distributed
import evaluation

PROJECT_ROOT = Path(__file__).resolve().parent
PLUGIN_KINDS = {  # folder -> (flag, attribute every plug-in must define)
    "models": ("--model", "MainModel"),
    "loss": ("--trainfunc", "LossFunction"),
    "optimizer": ("--optimizer", "Optimizer"),
    "scheduler": ("--scheduler", "Scheduler"),
}


class PluginError(ValueError):
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


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was given but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def place_on(net: nn.Module, device: torch.device) -> nn.Module:
    """Move net to device; on a CPU its 4-D weights go channels_last, which makes the convolutions of an
    evaluation forward pass about 1.2x faster there (benchmarks/evaluation.py) and training no slower."""
    net = net.to(device)
    return net.to(memory_format=torch.channels_last) if device.type == "cpu" else net


def cpu_has_fast_bfloat16() -> bool:
    """True when the CPU has AMX or AVX512-BF16 units, where bfloat16 autocast is faster than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
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


def restore_rng_states(states: dict) -> None:
    """Inverse of rng_states()."""
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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


class NonFiniteLossError(RuntimeError):
    """Too many training steps in a row had a non-finite loss or gradient."""


class ModelTrainer:
    """Trains a wrapped SpeakerNet, evaluates it on trial lists and saves/loads its checkpoints."""

    def __init__(self, speaker_model: nn.Module, optimizer: str, scheduler: str, mixedprec: bool,
                 device: torch.device, nonfinite_limit: int = 20, **kwargs):
        self.__model__ = speaker_model
        self.device = device
        self.__optimizer__ = load_plugin("optimizer", optimizer)(self.__model__.parameters(), **kwargs)
        self.__scheduler__, self.lr_step = load_plugin("scheduler", scheduler)(self.__optimizer__, **kwargs)
        if self.lr_step not in ("epoch", "iteration"):
            raise PluginError(f"Scheduler '{scheduler}' returned lr_step '{self.lr_step}'; "
                              "expected 'epoch' or 'iteration'")
        self.autocast_dtype = autocast_dtype(device, mixedprec)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.nonfinite_limit = nonfinite_limit
        self.args = kwargs
        self.last_epoch: dict = {}

    def autocast(self):
        """The autocast context for forward passes (a no-op when training in float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train_step(self, data: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Forward, backward and optimizer step; a step whose gradients are not finite is skipped."""
        self.__model__.zero_grad(set_to_none=True)
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
        for data, data_label in loader:
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
                    bar.close()
                    return None
            waiting_since = time.perf_counter()
        bar.close()
        if self.lr_step == "epoch":
            self.__scheduler__.step()
        good = totals.steps - totals.nonfinite
        if good == 0:
            raise RuntimeError("The epoch had no usable training step: the train list may have fewer speakers "
                               "with --nPerSpeaker utterances than --batch_size")
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

        Readable by the original's HEAD loader (model weights under model_state_dict)."""
        payload = {"model_state_dict": self.__model__.module.state_dict(),
                   "optimizer_state_dict": self.__optimizer__.state_dict(),
                   "scheduler_state_dict": self.__scheduler__.state_dict(),
                   "scaler_state_dict": self.scaler.state_dict(),
                   "epoch": epoch, "rng_state": rng_states(), "format": checkpoints.FORMAT_TAG,
                   "args": {key: value for key, value in self.args.items()
                            if isinstance(value, (str, int, float, bool, type(None)))}}
        if totals is not None:
            payload["epoch_totals"] = asdict(totals)
        return payload

    def saveParameters(self, path: str, epoch: int = 0, totals: EpochTotals | None = None) -> None:
        """Write a resumable checkpoint atomically."""
        checkpoints.write_atomically(self.checkpoint_payload(epoch, totals), path)

    def loadParameters(self, path: str, strict_model: bool = False) -> checkpoints.LoadReport:
        """Load model weights (any accepted format); with strict_model, every `__S__` tensor must fit."""
        report = self._load_model_weights(checkpoints.read_checkpoint(path), path)
        if strict_model and (report.missing_in("__S__.") or report.mismatched_in("__S__.")):
            raise checkpoints.CheckpointError(
                f"Checkpoint {path} does not fit the model built from the flags (see the list above); "
                "check --model, --encoder_type, --n_mels, --nOut and --log_input")
        return report

    def _load_model_weights(self, content: dict, path: str) -> checkpoints.LoadReport:
        """Load the model weights of a checkpoint read from `path` and print what did not fit."""
        report = checkpoints.load_weights(self.__model__.module, checkpoints.model_weights(content, path), path)
        print(report.text())
        return report

    def resume(self, path: str, content: dict) -> ResumePoint:
        """Restore model, optimizer, scheduler, scaler and RNG states from a checkpoint read from `path`."""
        self._load_model_weights(content, path)
        if "optimizer_state_dict" not in content:  # the original's bare state_dict: replay the scheduler
            epoch = checkpoints.epoch_of(path)
            for _ in range(epoch):
                self.__scheduler__.step()
            return ResumePoint(epoch + 1, source=path)
        self.__optimizer__.load_state_dict(content["optimizer_state_dict"])
        if "scheduler_state_dict" in content:
            self.__scheduler__.load_state_dict(content["scheduler_state_dict"])
        if "scaler_state_dict" in content:
            self.scaler.load_state_dict(content["scaler_state_dict"])
        if "rng_state" in content:
            restore_rng_states(content["rng_state"])
        totals = EpochTotals(**content["epoch_totals"]) if "epoch_totals" in content else None
        return ResumePoint(int(content["epoch"]) + 1, totals.steps if totals else 0, totals, path)

    def resume_latest(self, model_save_path: str) -> ResumePoint:
        """Continue from the newest readable state: the mid-epoch state or the newest epoch checkpoint."""
        candidates = []
        resume_path = os.path.join(model_save_path, checkpoints.RESUME_NAME)
        for path in [resume_path, *reversed(checkpoints.saved_checkpoints(model_save_path))]:
            if not os.path.exists(path):
                continue
            try:
                content = checkpoints.read_checkpoint(path)
            except checkpoints.CheckpointError as error:
                print(f"Skipping checkpoint that cannot be resumed from: {error}", file=sys.stderr)
                continue
            epoch = int(content["epoch"]) if "optimizer_state_dict" in content else checkpoints.epoch_of(path)
            candidates.append(((epoch, content.get("epoch_totals", {}).get("steps", 0)), path, content))
            if path != resume_path:
                break  # the newest readable epoch checkpoint
        if not candidates:
            return ResumePoint()
        _, path, content = max(candidates, key=lambda candidate: candidate[0])
        point = self.resume(path, content)
        print(f"Resumed from {path}; continuing with epoch {point.first_epoch}"
              + (f" after its first {point.skip_steps} batches" if point.skip_steps else ""))
        return point

    def current_lr(self) -> float:
        """The largest learning rate over the parameter groups."""
        return max(group["lr"] for group in self.__optimizer__.param_groups)
