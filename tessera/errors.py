"""Errors that reach users: each carries a message they can act on."""


class TesseraError(Exception):
    """Base class for errors reported to users without a traceback."""


class DataError(TesseraError):
    """Bad input data: a missing folder, a malformed line, unknown ids."""


class ModelError(TesseraError):
    """A model name or checkpoint that cannot be resolved or loaded."""
