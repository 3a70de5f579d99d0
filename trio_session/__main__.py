"""``python -m trio_session``: the command line (see :mod:`trio_session.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
