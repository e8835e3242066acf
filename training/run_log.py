"""What a training run writes to its console and folders: the run record (code, flags, config), scores.txt lines,
epoch timings and where it started."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
import zipfile
from pathlib import Path

import torch.nn as nn
import yaml

from arguments import resolved_config
from runtime import atomic_files
from runtime.checkpoint_files import LoadReport
from settings.sections import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
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


def initial_model_summary(report: LoadReport, net: nn.Module, path: str) -> str:
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
