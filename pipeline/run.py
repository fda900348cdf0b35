"""``python -m pipeline.run``: the ``slg`` CLI without installing the package (e.g. from a
``ray job submit --working-dir .`` upload)."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
