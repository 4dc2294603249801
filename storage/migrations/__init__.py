"""Alembic migrations of the blockwatch schema (run by ``storage.migrate``, no alembic.ini)."""
