"""``python -m supervisor.cli``: the same as the ``room-supervisor`` console script."""

import sys

from .main import main

sys.exit(main())
