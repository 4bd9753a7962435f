"""``python3 -m optlab.bench``: see :mod:`optlab.bench.cli`."""

import sys

from optlab.bench.cli import main

sys.exit(main())
