"""Entry point of ``python -m fnlearn.serve``; see ``fnlearn.serve.cli``."""

import sys

from fnlearn.serve.cli import main

# Guarded: worker processes are spawned, and a spawned process imports this module again.
if __name__ == "__main__":
    sys.exit(main())
