"""``python -m ancis_fast``: the same as the ``ancis-fast`` command."""
import sys

from .cli import main

sys.exit(main())
