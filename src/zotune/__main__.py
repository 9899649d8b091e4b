"""``python -m zotune``: the command line (same as the ``zotune`` script)."""

import sys

from zotune.cli import main

sys.exit(main())
