"""``fnlearn.sources`` is ``fnlearn.data.sources`` under its first name (see that module)."""

from fnlearn.data.sources import *  # noqa: F403 - the same public names
from fnlearn.data.sources import __all__  # noqa: F401
