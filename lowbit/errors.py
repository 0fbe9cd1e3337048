"""Errors that lowbit raises at its boundaries.

Every error is a ``ValueError`` subclass (except where noted) so that callers that validate input can catch
one type; each message names the value, the limit and the fix. This module imports nothing heavy: the
runtime uses it too.
"""


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class FormatError(LowbitError, ValueError):
    """A weight format name or its parameters are invalid (bits, group size, levels)."""


class WeightError(LowbitError, ValueError):
    """Weights or their quantization parameters are unusable (NaN/Inf, empty, mismatched shapes)."""


class KernelError(LowbitError, ValueError):
    """A kernel was requested that does not exist or does not support the layer."""


class TargetError(LowbitError, ValueError):
    """A target is unknown, or an artifact was built for another CPU / GPU than this one."""


class ArtifactError(LowbitError, ValueError):
    """An artifact is truncated, tampered with, or has a schema this runtime does not read."""


class InputError(LowbitError, ValueError):
    """A model was called with inputs of the wrong name, shape or dtype."""


class ModelError(LowbitError, ValueError):
    """A model file cannot be read or compiled: truncated, malformed, or using unsupported operators."""


class CompilerUnavailableError(LowbitError, RuntimeError):
    """The compiler cannot run in this process (TVM was loaded with its runtime library only)."""
