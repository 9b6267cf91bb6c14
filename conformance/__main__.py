"""``python -m conformance ...`` is the same as ``nvbox-conformance ...``."""

import sys

from conformance.runner import main

if __name__ == "__main__":
    sys.exit(main())
