"""Domain errors. The CLI turns each into one line and exit status 1; none is a traceback.

Every message should name the fix, not just the fault (tiktoken's `raise_disallowed_special_token`).
"""

from __future__ import annotations


class OrtRefineError(Exception):
    """Base of every error a user can cause or fix."""


class ConfigError(OrtRefineError, ValueError):
    """An option value that cannot work (negative budget, NaN weight, ...)."""


class UnknownNameError(OrtRefineError, KeyError):
    """A name missing from a registry; the message lists what exists."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BundleError(OrtRefineError):
    """A model bundle that is missing, incomplete or corrupt."""


class ProviderUnavailableError(OrtRefineError):
    """The execution provider asked for cannot be had in this environment."""


class PromptError(OrtRefineError, ValueError):
    """An empty prompt, or one that does not fit the model's context."""


class MissingExtraError(OrtRefineError, ImportError):
    """An optional dependency group is not installed."""


class ExportError(OrtRefineError):
    """Export or quantization failed; no bundle was written."""


class QualityGateError(ExportError):
    """A quantized graph strays too far from its parent on the built-in texts; nothing was written."""


class ValidationError(ExportError):
    """The exported graph disagrees with its reference beyond tolerance."""


class ObjectiveError(OrtRefineError):
    """An objective term failed (e.g. a reward function raised or returned bad values)."""
