"""`python -m dualprompt.bench` (see `dualprompt.bench`)."""

import sys

from .cli import main

sys.exit(main())
