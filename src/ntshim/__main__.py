"""``python -m ntshim`` is the ``ntshim`` command."""

import sys

from .cli import main

sys.exit(main())
