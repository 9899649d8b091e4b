"""``python -m zotune.bench ...`` is ``zotune bench ...``."""

import sys

from zotune.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
