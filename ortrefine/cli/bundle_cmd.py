"""`ortrefine verify`: check every file of a bundle against its manifest (torch-free)."""

from __future__ import annotations

import click

from ortrefine.cli.common import domain_errors


@click.command("verify")
@click.argument("bundle")
@domain_errors
def verify(bundle: str) -> None:
    """Check size and sha256 of every file BUNDLE's manifest lists, and that it lists every file there; exit 1 naming the first bad one."""
    from ortrefine.bundle import verify_bundle
    from ortrefine.catalog import resolve_bundle_path

    r = verify_bundle(resolve_bundle_path(bundle))
    click.echo(f"ok: {r.path} ({r.files} files, {r.bytes / 1e6:.1f} MB, sha256 match, nothing unlisted)")


commands = [verify]
