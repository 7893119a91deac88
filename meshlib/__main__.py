"""``python -m meshlib``: the same as the ``meshlib`` command."""

import sys

from ._cli import main

sys.exit(main())
