"""`python -m composer_core.cli` runs the `composer-core` command."""

import sys

from composer_core.cli.main import main

sys.exit(main())
