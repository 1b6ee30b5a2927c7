"""Registry of search methods: each module offers ``PARAMS`` ({name: type}) and ``search(...)``."""

from __future__ import annotations

from tessera.index import exact, plaid, xtr

METHODS = {"exact": exact, "plaid": plaid, "xtr": xtr}
