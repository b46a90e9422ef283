"""What every click CLI of the project shares: one-line errors (docs/DESIGN.md 10) and a `--debug` switch."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys

import click

from .errors import IcvError


def debug_option(f):
    return click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")(f)


def quiet_libraries() -> None:
    """Silence diffusers' and transformers' loading bars and chatter: our CLIs report their own progress."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def debug_log(enabled: bool):
    """--debug: icv_deploy's debug lines on stderr (e.g. the precision a backend chose, and why) for one command;
    the logger is put back afterwards (a process that runs several commands, such as the tests, gets no stale level)."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("icv_deploy")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def one_line_errors(f):
    """Turn IcvError (and the usual file errors) into `error: ...` on stderr and exit code 2, unless --debug.
    Also quiets the libraries' own logging unless --debug."""

    @functools.wraps(f)
    def wrapper(*args, debug: bool = False, **kwargs):
        if not debug:
            quiet_libraries()
        try:
            with debug_log(debug):
                return f(*args, **kwargs)
        except (IcvError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            if debug:
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            click.echo(f"error: {message}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
