"""`python -m reidfast ...` is the `reidfast` command."""

import sys

from reidfast.cli import main

sys.exit(main())
