"""How posformer's commands talk to their user.

Messages (what a run is doing, its results, warnings) go through `logging`, under the `posformer` logger; a command
whose product is a text report (the corpus summary, a benchmark's table) prints that report on standard output.
`log_to_console`, called by each command's entry point, shows the messages on standard error through `tqdm.write`,
so that a progress bar on the terminal stays whole. Used as a library (`main(argv)` from Python), posformer logs
without installing any handler: the application decides.
"""

import logging
import sys

from tqdm.auto import tqdm


class TqdmHandler(logging.Handler):
    """Writes each record on standard error above the progress bars: `message` for information, `LEVEL: message`
    for warnings and errors."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname}: {message}"
            tqdm.write(message, file=sys.stderr)
        except Exception:  # noqa: BLE001  (logging's own contract: a failing handler reports and goes on)
            self.handleError(record)


def log_to_console(level: int = logging.INFO) -> None:
    """Show posformer's messages from `level` up on the terminal (once, however often it is called)."""
    package_logger = logging.getLogger("posformer")
    package_logger.setLevel(level)
    if not any(isinstance(handler, TqdmHandler) for handler in package_logger.handlers):
        package_logger.addHandler(TqdmHandler())
