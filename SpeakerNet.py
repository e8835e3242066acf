"""SpeakerNet (model + loss), plug-in loading, and ModelTrainer (training, checkpoints, evaluation)."""
from __future__ import annotations

import importlib
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import checkpoints
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


class SpeakerNet(nn.Module):
    """The embedding model `__S__` and the training loss `__L__` (the original's state_dict keys)."""

    def __init__(self, model: str, optimizer: str, trainfunc: str, nPerSpeaker: int, **kwargs):
        super().__init__()
        self.__S__ = load_plugin("models", model)(**kwargs)
        self.__L__ = load_plugin("loss", trainfunc)(**kwargs)
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


class ModelTrainer:
    """Trains a wrapped SpeakerNet, evaluates it on trial lists and saves/loads its checkpoints."""

    def __init__(self, speaker_model: nn.Module, optimizer: str, scheduler: str, mixedprec: bool,
                 device: torch.device, **kwargs):
        self.__model__ = speaker_model
        self.device = device
        self.__optimizer__ = load_plugin("optimizer", optimizer)(self.__model__.parameters(), **kwargs)
        self.__scheduler__, self.lr_step = load_plugin("scheduler", scheduler)(self.__optimizer__, **kwargs)
        if self.lr_step not in ("epoch", "iteration"):
            raise PluginError(f"Scheduler '{scheduler}' returned lr_step '{self.lr_step}'; "
                             "expected 'epoch' or 'iteration'")
        self.autocast_dtype = autocast_dtype(device, mixedprec)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.args = kwargs

    def autocast(self):
        """The autocast context for forward passes (a no-op when training in float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def train_network(self, loader, verbose: bool) -> tuple[float, float]:
        """One epoch over `loader`; returns (mean loss, mean prec1)."""
        self.__model__.train()
        loss_sum = torch.zeros((), device=self.device)
        prec_sum = torch.zeros((), device=self.device)
        steps, samples, data_wait = 0, 0, 0.0
        started = time.perf_counter()
        bar = tqdm(total=len(loader), disable=not verbose, unit="batch", dynamic_ncols=True, leave=False)
        waiting_since = time.perf_counter()
        for data, data_label in loader:
            data_wait += time.perf_counter() - waiting_since
            data = data.transpose(1, 0).to(self.device, non_blocking=True)
            label = torch.as_tensor(data_label, dtype=torch.long).to(self.device, non_blocking=True)
            self.__model__.zero_grad(set_to_none=True)
            with self.autocast():
                nloss, prec1 = self.__model__(data, label)
            self.scaler.scale(nloss).backward()
            self.scaler.step(self.__optimizer__)
            self.scaler.update()
            loss_sum += nloss.detach().float()
            prec_sum += torch.as_tensor(prec1).detach().float().reshape(-1)[0]
            steps += 1
            samples += data.shape[0] * data.shape[1]
            if self.lr_step == "iteration":
                self.__scheduler__.step()
            bar.update(1)
            if verbose and (steps % 10 == 0 or steps == len(loader)):
                elapsed = time.perf_counter() - started
                bar.set_postfix_str(f"Loss {loss_sum.item() / steps:.5f} TEER/TAcc {prec_sum.item() / steps:2.3f}% "
                                    f"- {samples / elapsed:.2f} Hz, data wait {100 * data_wait / elapsed:.0f}%")
            waiting_since = time.perf_counter()
        bar.close()
        if self.lr_step == "epoch":
            self.__scheduler__.step()
        if steps == 0:
            raise RuntimeError("The training loader gave no batch: the train list has fewer speakers with "
                               "--nPerSpeaker utterances than --batch_size")
        elapsed = time.perf_counter() - started
        self.last_epoch_timing = {"seconds": elapsed, "data_wait": data_wait, "samples_per_second": samples / elapsed}
        return loss_sum.item() / steps, prec_sum.item() / steps

    def evaluateFromList(self, test_list: str, test_path: str, nDataLoaderThread: int, eval_frames: int,
                         num_eval: int = 10, scoring: str = "original", **kwargs):
        """Embed every file of a trial list and score its trials; returns (scores, labels, trials)."""
        self.__model__.eval()
        trials = evaluation.read_trials(test_list)
        evaluation.check_files_exist(trials.files, test_path)
        embeddings = evaluation.extract_embeddings(self.__model__, trials.files, test_path, eval_frames, num_eval,
                                                   nDataLoaderThread, self.device, self.autocast_dtype)
        normalize = bool(self.__model__.module.__L__.test_normalize)
        scores = evaluation.score_trials(trials, embeddings, normalize, mode=scoring)
        pairs = [f"{enrol} {test}" for enrol, test in zip(trials.enrol, trials.test)]
        return scores, trials.labels, pairs

    def checkpoint_payload(self, epoch: int) -> dict:
        """Everything needed to resume exactly after `epoch` (readable by the original's HEAD loader)."""
        return {"model_state_dict": self.__model__.module.state_dict(),
                "optimizer_state_dict": self.__optimizer__.state_dict(),
                "scheduler_state_dict": self.__scheduler__.state_dict(),
                "scaler_state_dict": self.scaler.state_dict(),
                "epoch": epoch, "rng_state": rng_states(), "format": checkpoints.FORMAT_TAG,
                "args": {key: value for key, value in self.args.items()
                         if isinstance(value, (str, int, float, bool, type(None)))}}

    def saveParameters(self, path: str, epoch: int = 0) -> None:
        """Write a resumable checkpoint atomically."""
        checkpoints.write_atomically(self.checkpoint_payload(epoch), path)

    def loadParameters(self, path: str, strict_model: bool = False) -> checkpoints.LoadReport:
        """Load model weights (any accepted format); with strict_model, every `__S__` tensor must fit."""
        content = checkpoints.read_checkpoint(path)
        report = checkpoints.load_weights(self.__model__.module, checkpoints.model_weights(content, path), path)
        print(report.text())
        if strict_model and (report.missing_in("__S__.") or report.mismatched_in("__S__.")):
            raise checkpoints.CheckpointError(
                f"Checkpoint {path} does not fit the model built from the flags (see the list above); "
                "check --model, --encoder_type, --n_mels, --nOut and --log_input")
        return report

    def resume(self, path: str) -> int:
        """Restore model, optimizer, scheduler, scaler and RNG states; returns the first epoch to train."""
        content = checkpoints.read_checkpoint(path)
        self.loadParameters(path)
        if "optimizer_state_dict" not in content:  # the original's bare state_dict: replay the scheduler
            epoch = checkpoints.epoch_of(path)
            for _ in range(epoch):
                self.__scheduler__.step()
            return epoch + 1
        self.__optimizer__.load_state_dict(content["optimizer_state_dict"])
        if "scheduler_state_dict" in content:
            self.__scheduler__.load_state_dict(content["scheduler_state_dict"])
        if "scaler_state_dict" in content:
            self.scaler.load_state_dict(content["scaler_state_dict"])
        if "rng_state" in content:
            restore_rng_states(content["rng_state"])
        return int(content.get("epoch", checkpoints.epoch_of(path))) + 1

    def resume_latest(self, model_save_path: str) -> int:
        """Resume from the newest readable checkpoint of an experiment; 1 when there is none."""
        for path in reversed(checkpoints.saved_checkpoints(model_save_path)):
            try:
                first_epoch = self.resume(path)
            except checkpoints.CheckpointError as error:
                print(f"Skipping checkpoint that cannot be resumed from: {error}", file=sys.stderr)
                continue
            print(f"Resumed from {path}; continuing with epoch {first_epoch}")
            return first_epoch
        return 1

    def current_lr(self) -> float:
        """The largest learning rate over the parameter groups."""
        return max(group["lr"] for group in self.__optimizer__.param_groups)
