"""``python -m retaincl`` (and ``torchrun -m retaincl``): the same as the ``retaincl`` command."""

import sys

from retaincl.cli import main

sys.exit(main())
