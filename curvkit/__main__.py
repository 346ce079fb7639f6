"""``python -m curvkit report ...``: the same as the ``curvkit`` console script."""

import sys

from curvkit.cli import main

sys.exit(main())
