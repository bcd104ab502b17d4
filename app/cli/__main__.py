"""``python -m app.cli``: the ``tiergate`` command."""

import sys

from app.cli.main import main

sys.exit(main())
