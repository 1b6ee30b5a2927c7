"""Alembic migrations of the metadata store (applied at start-up by ``tessera.service.store.migrate``)."""
