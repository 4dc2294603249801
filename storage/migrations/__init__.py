"""Alembic migrations of the blockwatch schema (run by ``storage.migrate``, no alembic.ini).

``HEAD`` is the newest revision in ``versions/``: a database stamped with it is opened without
loading Alembic. A new migration changes it (tests/test_storage.py checks the two agree).
"""

HEAD = "0007"
