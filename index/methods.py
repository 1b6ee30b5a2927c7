"""Registry of search methods: each module offers ``PARAMS`` ({name: type}) and ``search(...)``."""

from __future__ import annotations

from tessera.index import exact, plaid, prf, xtr

METHODS = {"exact": exact, "plaid": plaid, "xtr": xtr, "prf": prf}
