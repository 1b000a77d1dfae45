"""`python -m ortrefine`: the same as the `ortrefine` command."""

from ortrefine.cli.entry import run

run()
