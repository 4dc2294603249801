"""``python -m blockwatch``: the ``blockwatch`` command."""

import sys

from blockwatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
