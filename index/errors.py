"""Errors of the index engine that reach users (missing, corrupt or too-new index folders)."""

from __future__ import annotations

from tessera.errors import TesseraError


class IndexError_(TesseraError):
    """Base class for problems with an index folder (named with a trailing underscore so it does not
    shadow the built-in IndexError)."""


class IndexNotFoundError(IndexError_):
    """The index folder or its manifest does not exist."""


class IndexExistsError(IndexError_):
    """``create`` was pointed at a folder that already holds an index or other files."""


class IndexCorruptError(IndexError_):
    """A file of the index is missing, truncated or fails its checksum."""


class IndexVersionError(IndexError_):
    """The index was written by a newer format version than this code understands."""
