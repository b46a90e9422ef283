"""User-facing errors (docs/DESIGN.md 10).

Every entry point turns an `IcvError` into one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback. Raise these for bad input: files, images, instructions, model folders, engines.
"""


class IcvError(Exception):
    """Bad input: the message is one line that names the problem."""

    exit_code = 2


class ModelFilesError(IcvError):
    """A model folder, ONNX folder or engine is missing files or does not match the runtime."""


class ImageError(IcvError):
    """An image that cannot be read or used."""


class InstructionError(IcvError):
    """An instruction that is empty or fits no task."""
