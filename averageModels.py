#!/usr/bin/env python
"""Average the model weights of several checkpoints (e.g. the last 10 epochs of a run, as wespeaker's recipes do)
into one checkpoint that loads with --initial_model, for --eval or for fine-tuning.

--last N averages the checkpoints of the last N epochs, so the run must have saved and kept each of them: train with
--save_last_epochs N (a checkpoint every --test_interval epochs alone would leave gaps; --keep_last and --keep_best
never remove those N).

    python averageModels.py --save_path exps/exp1 --last 10 --output exps/exp1/model/avg_last10.model
    python averageModels.py --inputs a.model b.model c.model --output avg.model
"""
from __future__ import annotations

import os
import sys

import arguments
from runtime import checkpoint_files
from runtime.atomic_files import check_not_an_input
from runtime.averaging import average_weights
from runtime.errors import ConfigError, MissingFileError, run_command

DEFAULT_LAST = 10


def build_parser() -> arguments.ArgumentParser:
    """The command line: where the checkpoints come from and where the average goes."""
    parser = arguments.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--save_path", help="experiment folder: average the checkpoints of its last --last epochs "
                        "in <save_path>/model")
    source.add_argument("--inputs", nargs="+", help="checkpoint files to average (the last one gives the args)")
    parser.add_argument("--last", type=int, default=None, metavar="N",
                        help=f"with --save_path: average the checkpoints of the last N epochs, model<E-N+1>.model to "
                        f"model<E>.model with E the highest epoch saved; each must exist (train with "
                        f"--save_last_epochs N, which --keep_last never removes) (default {DEFAULT_LAST})")
    parser.add_argument("--output", required=True, help="checkpoint file to write")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one "
                        "line (also SPEAKERNET_DEBUG=1)")
    return parser


def last_epoch_checkpoints(save_path: str, count: int) -> list[str]:
    """The checkpoints of the last `count` epochs in `save_path`/model, oldest first: epochs E - count + 1 to E,
    E the highest epoch saved; a gap among them is an error."""
    if count < 1:
        raise ConfigError(f"--last must be 1 or more, got {count}")
    folder = os.path.join(save_path, "model")
    if not os.path.isdir(folder):
        raise MissingFileError(f"--save_path {save_path} has no model/ folder of checkpoints")
    found = {checkpoint_files.epoch_of(path): path for path in checkpoint_files.saved_checkpoints(folder)}
    if not found:
        raise ConfigError(f"{folder} holds no epoch checkpoint (model*.model) to average")
    newest = max(found)
    if count > newest:
        raise ConfigError(f"--last {count}: the newest checkpoint in {folder} is of epoch {newest}; "
                          f"give --last {newest} or fewer")
    wanted = range(newest - count + 1, newest + 1)
    missing = [epoch for epoch in wanted if epoch not in found]
    if missing:
        raise ConfigError(f"--last {count}: {folder} has no checkpoint of epoch {epoch_ranges(missing)} of the last "
                          f"{count} epochs (to {newest}); train with --save_last_epochs {count} to save and keep each "
                          "of them (--keep_last and --keep_best never remove those), or name the files to average with "
                          "--inputs")
    return [found[epoch] for epoch in wanted]


def epoch_ranges(epochs: list[int]) -> str:
    """Ascending epoch numbers in words, runs joined: [3, 4, 5, 8] -> '3-5, 8'."""
    runs: list[list[int]] = []
    for epoch in epochs:
        if runs and epoch == runs[-1][-1] + 1:
            runs[-1].append(epoch)
        else:
            runs.append([epoch])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def input_paths(args) -> list[str]:
    """The checkpoints to average, in order (the last one is the newest)."""
    if args.inputs is not None:
        if args.last is not None:
            raise ConfigError("--last goes with --save_path; --inputs averages exactly the files it names")
        return list(args.inputs)
    return last_epoch_checkpoints(args.save_path, DEFAULT_LAST if args.last is None else args.last)


def averaged_checkpoint(paths: list[str]) -> dict:
    """A checkpoint in our format: the averaged weights, the args of the last input and the files averaged."""
    weights = average_weights(paths)
    newest = checkpoint_files.read_checkpoint(paths[-1])
    return {"model_state_dict": weights, "format": checkpoint_files.FORMAT_TAG, "args": dict(newest.get("args") or {}),
            "averaged_from": list(paths)}


def run(argv: list[str]) -> int:
    """Average the checkpoints the command line names and write the result."""
    args = build_parser().parse_args(argv)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise MissingFileError(f"--output {args.output}: the folder {folder} does not exist")
    paths = input_paths(args)
    check_not_an_input(args.output, "--output", [("the input checkpoint", path) for path in paths])
    checkpoint_files.write_atomically(averaged_checkpoint(paths), args.output)
    print(f"Averaged {len(paths)} checkpoints ({os.path.basename(paths[0])} ... {os.path.basename(paths[-1])}) "
          f"into {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
