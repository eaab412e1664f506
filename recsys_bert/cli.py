"""What the scripts share: bad input ends the run with one line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from recsys_bert.utils import InputError, Interrupted


def run_main(main: Callable[[], object]) -> None:
    try:
        main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as err:  # evaluation's check of the scores
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def quiet_libraries() -> None:
    """Keeps the console to our progress bars and summaries."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # a line per file of every checkpoint otherwise


def configure_logging(accelerator) -> None:
    """INFO lines from the main process only; the other processes report warnings and errors."""
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=level)
