"""OONI's data formats, as blockwatch reads them.

OONI measurements are JSON objects in OONI's data formats (github.com/ooni/spec,
``data-formats/``): the df-000 envelope and, in ``test_keys``, the keys of each test.
"""

from __future__ import annotations

SCRUBBED_IP = "127.0.0.1"  # what OONI itself publishes as probe_ip (df-000)


class OONIError(ValueError):
    """A record is not an OONI measurement blockwatch can read; the message says why."""
