"""``python -m surgery_lib``: see :mod:`surgery_lib.cli`."""

import sys

from .cli import main

sys.exit(main())
