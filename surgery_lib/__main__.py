"""``python -m surgery_lib``: see :mod:`surgery_lib.cli`."""

import sys

from surgery_lib.cli import main

sys.exit(main())
