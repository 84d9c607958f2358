"""User-facing errors: one line on stderr and exit status 1, never a traceback; and interruption:
Ctrl-C or SIGTERM ends a script with one line and status 128 + the signal's number."""
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn


class UserError(Exception):
    """A problem the user can fix (bad option, bad file); printed as one line."""


# what str.splitlines breaks at, shown escaped: a message echoing a value or a file name that holds
# one (`-model "lstm\n"`) still prints as one line
LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def fail(message: str) -> NoReturn:
    print(f"Error: {message.translate(LINE_BREAKS)}", file=sys.stderr)
    sys.exit(1)


def diagnostic(message: str) -> None:
    """A line for the user on stderr (notices, warnings), leaving stdout to the output proper."""
    print(message, file=sys.stderr, flush=True)


class Terminated(BaseException):
    """SIGTERM, raised wherever the script is, as Ctrl-C raises KeyboardInterrupt: on the way out
    `finally` blocks and context managers remove what was half-written (temporaries) and leave the
    files already in place as they were. A BaseException, so no `except Exception` swallows it."""


def _terminate(_number: int, _frame: FrameType | None) -> None:
    raise Terminated


def run_main(main: Callable[[list[str]], int | None]) -> None:
    """Run a script's main(argv), turning UserError into a one-line error and status 1, and Ctrl-C
    or SIGTERM into one line and status 128 + the signal's number (train.py's own handler saves a
    checkpoint first; this one covers every other moment of every script)."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        status = main(sys.argv[1:])
    except UserError as error:
        fail(str(error))
    except KeyboardInterrupt:
        stopped(signal.SIGINT)
    except Terminated:
        stopped(signal.SIGTERM)
    except BrokenPipeError:
        # `python sample.py ... | head` closes stdout early; that is not an error.
        sys.stderr.close()
        sys.exit(0)
    sys.exit(status or 0)


def stopped(number: signal.Signals) -> NoReturn:
    print(f"{number.name} received: stopped", file=sys.stderr, flush=True)
    sys.exit(128 + number)
