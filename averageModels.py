#!/usr/bin/env python
"""Average the model weights of several checkpoints (e.g. the last 10 epochs of a run, as wespeaker's recipes do)
into one checkpoint that loads with --initial_model, for --eval or for fine-tuning.

    python averageModels.py --save_path exps/exp1 --last 10 --output exps/exp1/model/avg_last10.model
    python averageModels.py --inputs a.model b.model c.model --output avg.model
"""
from __future__ import annotations

import os
import sys

import arguments
from runtime import checkpoints
from runtime.errors import ConfigError, MissingFileError, run_command

DEFAULT_LAST = 10


def build_parser() -> arguments.ArgumentParser:
    """The command line: where the checkpoints come from and where the average goes."""
    parser = arguments.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--save_path", help="experiment folder: average the newest --last epoch checkpoints "
                        "<save_path>/model/model*.model")
    source.add_argument("--inputs", nargs="+", help="checkpoint files to average (the last one gives the args)")
    parser.add_argument("--last", type=int, default=None,
                        help=f"with --save_path: how many of the newest epochs to average (default {DEFAULT_LAST})")
    parser.add_argument("--output", required=True, help="checkpoint file to write")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one "
                        "line (also SPEAKERNET_DEBUG=1)")
    return parser


def newest_checkpoints(save_path: str, count: int) -> list[str]:
    """The `count` epoch checkpoints of `save_path` with the highest epoch numbers, oldest first."""
    if count < 1:
        raise ConfigError(f"--last must be 1 or more, got {count}")
    folder = os.path.join(save_path, "model")
    if not os.path.isdir(folder):
        raise MissingFileError(f"--save_path {save_path} has no model/ folder of checkpoints")
    found = sorted(checkpoints.saved_checkpoints(folder), key=checkpoints.epoch_of)
    if not found:
        raise ConfigError(f"{folder} holds no epoch checkpoint (model*.model) to average")
    if len(found) < count:
        raise ConfigError(f"--last {count}: {folder} holds only {len(found)} epoch checkpoints; "
                          f"give --last {len(found)} or fewer")
    return found[-count:]


def input_paths(args) -> list[str]:
    """The checkpoints to average, in order (the last one is the newest)."""
    if args.inputs is not None:
        if args.last is not None:
            raise ConfigError("--last goes with --save_path; --inputs averages exactly the files it names")
        return list(args.inputs)
    return newest_checkpoints(args.save_path, DEFAULT_LAST if args.last is None else args.last)


def averaged_checkpoint(paths: list[str]) -> dict:
    """A checkpoint in our format: the averaged weights, the args of the last input and the files averaged."""
    weights = checkpoints.average_weights(paths)
    newest = checkpoints.read_checkpoint(paths[-1])
    return {"model_state_dict": weights, "format": checkpoints.FORMAT_TAG, "args": dict(newest.get("args") or {}),
            "averaged_from": list(paths)}


def run(argv: list[str]) -> int:
    """Average the checkpoints the command line names and write the result."""
    args = build_parser().parse_args(argv)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise MissingFileError(f"--output {args.output}: the folder {folder} does not exist")
    paths = input_paths(args)
    checkpoints.write_atomically(averaged_checkpoint(paths), args.output)
    print(f"Averaged {len(paths)} checkpoints ({os.path.basename(paths[0])} ... {os.path.basename(paths[-1])}) "
          f"into {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: a mistake in what was given ends with one line and exit status 1 (traceback with --debug)."""
    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
