"""``python -m diffusion_utils train|sample …`` — see :mod:`diffusion_utils.cli`."""

import sys

from .cli import main

sys.exit(main())
