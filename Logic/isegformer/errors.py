"""The package's exceptions.

Every error the package raises on purpose derives from :class:`ISegFormerError`, so a caller
(the CLI, the Slicer widget, a batch script) can catch one type and show ``str(err)``: each
message says what is wrong and what to do next.
"""


class ISegFormerError(Exception):
    """Base class of every error this package raises deliberately."""


class InvalidInputError(ISegFormerError, ValueError):
    """An image, volume, mask, click or argument that cannot be used as given."""


class CheckpointError(ISegFormerError):
    """A weights file that is not a usable checkpoint of the expected model."""


class WeightsError(ISegFormerError):
    """A model's weights could not be found, downloaded or verified."""


class DownloadError(WeightsError):
    """A download failed (offline, HTTP error, timeout, disk full)."""


class ChecksumMismatchError(WeightsError):
    """A file's SHA256 differs from the expected one; the file was removed and never loaded."""


class CancelledError(ISegFormerError):
    """The user cancelled a long operation; the previous state is intact."""


class SessionFileError(ISegFormerError):
    """A saved session that cannot be read (corrupt, or written by a newer version)."""


class FileFormatError(ISegFormerError, ValueError):
    """A file that is not in the format it claims to be (.mrk.json, .seg.nrrd, ...)."""
