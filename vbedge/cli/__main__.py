"""``python -m vbedge.cli``: the ``vbedge`` command."""

import sys

from . import main

sys.exit(main())
