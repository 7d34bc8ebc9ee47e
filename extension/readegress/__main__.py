"""``python -m readegress``."""

import sys

from readegress.cli import main

sys.exit(main())
