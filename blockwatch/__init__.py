"""blockwatch: probes that measure internet censorship.

The distribution is ``blockwatch-censorship`` on PyPI (``blockwatch`` there is an unrelated
project); the command and the import package are ``blockwatch``.
"""

DISTRIBUTION = "blockwatch-censorship"
