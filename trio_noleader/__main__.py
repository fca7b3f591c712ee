"""``python -m trio_noleader``: the ``noleader`` command line."""

import sys

from ._cli import main

sys.exit(main())
