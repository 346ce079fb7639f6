"""``python -m curvkit report ...``: the same as the ``curvkit`` console script."""

import sys

from curvkit.cli import main

if __name__ == "__main__":  # not on import (pytest's doctest collection imports every module)
    sys.exit(main())
