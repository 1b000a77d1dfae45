"""`ortrefine verify`: every byte of a bundle against its manifest.

Loading checks sizes only (a full hash of a 539 MB graph would double the start-up time), so a
flipped byte in the weights is found only here: worth running after a copy or a download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ortrefine.bundle.format import MANIFEST, REQUIRED_FILES, regular_file
from ortrefine.bundle.read import read_manifest, sha256_file
from ortrefine.errors import BundleError


@dataclass
class VerifyReport:
    """What `verify` checked."""

    path: Path
    files: int = 0
    bytes: int = 0
    unlisted: list[str] = field(default_factory=list)


def verify_bundle(path: str | Path) -> VerifyReport:
    """Check size and sha256 of every file the manifest lists; BundleError names the first bad one."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"no bundle at {path}: give the folder of an exported bundle")
    manifest = read_manifest(path)
    files = manifest.get("files", {})
    for required in REQUIRED_FILES:
        if required not in files:
            raise BundleError(f"{path}: manifest does not list {required}; re-export the bundle")
    report = VerifyReport(path)
    for name, info in sorted(files.items()):
        st = regular_file(path, name)
        if st is None:
            raise BundleError(f"{path}: missing {name}; re-export the bundle")
        if st.st_size != info["bytes"]:
            raise BundleError(f"{path}: {name} is {st.st_size} bytes, manifest says {info['bytes']}; re-export the bundle")
        if sha256_file(path / name) != info["sha256"]:
            raise BundleError(f"{path}: {name} fails its sha256 check (corrupt or modified); re-export the bundle")
        report.files += 1
        report.bytes += st.st_size
    report.unlisted = sorted(p.name for p in path.iterdir() if p.name != MANIFEST and p.name not in files)
    if report.unlisted:
        # a graph can read weights from any file beside it (external data): one the manifest
        # does not vouch for makes the bundle unverifiable, not merely untidy
        shown = ", ".join(report.unlisted[:3]) + (" …" if len(report.unlisted) > 3 else "")
        raise BundleError(f"{path}: {shown} not in the manifest (a graph may read it unchecked); remove it or re-export the bundle")
    return report
