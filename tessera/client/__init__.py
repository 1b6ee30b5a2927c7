"""Tessera client SDK (work in progress: types, errors and filters)."""
