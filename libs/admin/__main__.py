"""``python -m chatplane.admin`` is the ``chatplane`` command."""

import sys

from chatplane.admin.cli import main

if __name__ == "__main__":
    sys.exit(main())
