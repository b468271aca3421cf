"""`python -m microt2i.cli …` (and `torchrun … -m microt2i.cli …`) runs the `microt2i` command."""

import sys

from . import main

sys.exit(main())
