"""`posformer-train`: train a posformer translation model from scratch, then export it.

    posformer-train --output_dir runs/en-de                         # the built-in corpus, the tiny model
    accelerate launch -m posformer.training --model_size base ...   # any Accelerate setup: DDP, FSDP, bf16

The arguments are `arguments.py`'s; the loop is `loop.TrainingRun`; what the output folder holds is listed in
`run_folder.py`. A diverged run exits with its message and status 1; a run stopped by SIGTERM (after its checkpoint)
with its message and status 143, as a process the signal ended.
"""

import signal
import sys

from .arguments import parse_args
from .console import log_to_console
from .loop import TrainingDivergedError, TrainingRun, TrainingStoppedError


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line, train, export; returns the final results."""
    model_args, data_args, train_args = parse_args(argv)
    return TrainingRun(model_args, data_args, train_args).train()


def cli() -> None:
    """Console entry point `posformer-train`."""
    log_to_console()
    try:
        main()
    except TrainingDivergedError as error:
        sys.exit(f"posformer-train: {error}")
    except TrainingStoppedError as error:
        print(f"posformer-train: {error}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    cli()
