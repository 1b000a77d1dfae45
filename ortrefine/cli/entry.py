"""The console entry point: signals first, then the commands.

Signal handlers are installed before the command modules (and numpy, onnxruntime, torch) are
imported, so an interrupt at any moment, start-up included, ends the same way: the staging
folders and locks of the run are removed by their `finally` blocks as the exception unwinds, one
line is printed, and the exit status is 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import sys


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM (a KeyboardInterrupt, so every layer treats it alike)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: object) -> None:
    # a second signal while the first unwinds would cut a clean-up short: ignore it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _interrupted(e: KeyboardInterrupt) -> int:
    signum = getattr(e, "signum", signal.SIGINT)
    name = signal.Signals(signum).name
    write = sys.modules.get("ortrefine.bundle.write")
    removed = getattr(write, "REMOVED", None)
    hint = getattr(e, "hint", None) or ("partial output was removed" if removed else None)
    try:
        sys.stderr.write(f"Error: interrupted by {name}" + (f"; {hint}" if hint else "") + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return 128 + int(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the `ortrefine` command line; returns the exit status."""
    install_signal_handlers()
    try:
        import click

        from ortrefine.cli.main import cli

        try:
            rv = cli.main(args=argv, prog_name="ortrefine", standalone_mode=False)
        except click.exceptions.Abort as e:
            if isinstance(e.__context__, KeyboardInterrupt):
                return _interrupted(e.__context__)
            sys.stderr.write("Aborted!\n")
            return 1
        except click.ClickException as e:
            e.show()
            return e.exit_code
        return rv if isinstance(rv, int) else 0
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except BrokenPipeError:
        return 1


def run() -> None:
    rc = main()
    # the work is done and its line printed: a signal during interpreter shutdown must not turn a
    # success into a silent 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(rc)


if __name__ == "__main__":  # pragma: no cover
    run()
