"""Exception types of vbedge.

Every error a user can cause derives from :class:`VbedgeError` and from the matching built-in
type (``ValueError``, ``FileNotFoundError``...), so callers can catch either.
"""


class VbedgeError(Exception):
    """Base class of every error vbedge raises on purpose."""


class InvalidInputError(VbedgeError, ValueError):
    """An array, option or argument is not what the API expects (shape, dtype, NaN, range)."""


class FormatError(VbedgeError, ValueError):
    """A file (codebook, vocabulary, bundle, checkpoint) is corrupt, of another version or tampered."""


class MissingDependencyError(VbedgeError, ImportError):
    """An optional component (CUDA extension, TensorRT, torch) is needed but not installed/built."""


class SignatureError(FormatError):
    """A bundle is unsigned, signed by a key that is not trusted, or its signature does not verify."""
