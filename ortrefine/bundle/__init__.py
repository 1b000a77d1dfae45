"""The bundle: the one thing export and runtime share. Torch-free.

format: file names, manifest shape, which names a manifest may use. read: opening and checking.
verify: every byte against the manifest. write: claiming a target, staging and the atomic swap,
built on names (helper names beside a target), lock (one writer per target), leftovers (what a
killed run left) and fsops (a rename that never replaces, signals deferred).
"""

from ortrefine.bundle.format import FORMAT_VERSION, MANIFEST, MODEL_FILE, TOKENIZER_FILE, validate_manifest
from ortrefine.bundle.read import Bundle, describe_files, open_bundle, read_json, read_manifest, sha256_file
from ortrefine.bundle.verify import VerifyReport, verify_bundle
from ortrefine.bundle.write import (
    OutputClaim, Stale, check_target, claim_output, find_stale, library_versions, staging_dir, write_manifest,
)

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "MODEL_FILE", "TOKENIZER_FILE", "validate_manifest",
    "Bundle", "describe_files", "open_bundle", "read_json", "read_manifest", "sha256_file",
    "VerifyReport", "verify_bundle",
    "OutputClaim", "Stale", "check_target", "claim_output", "find_stale", "library_versions", "staging_dir", "write_manifest",
]
