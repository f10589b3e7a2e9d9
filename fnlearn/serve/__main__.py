"""Entry point of ``python -m fnlearn.serve``; see ``fnlearn.serve.cli``."""

import sys

from fnlearn.serve.cli import main

sys.exit(main())
