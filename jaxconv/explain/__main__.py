"""``python -m jaxconv.explain``: see :func:`jaxconv.explain.main`."""

import sys

from jaxconv.explain import main

sys.exit(main())
