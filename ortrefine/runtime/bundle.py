"""The runtime's view of a bundle; the format itself lives in `ortrefine.bundle`."""

from ortrefine.bundle import MANIFEST, MODEL_FILE, TOKENIZER_FILE, Bundle, describe_files, open_bundle, sha256_file

__all__ = ["MANIFEST", "MODEL_FILE", "TOKENIZER_FILE", "Bundle", "describe_files", "open_bundle", "sha256_file"]
