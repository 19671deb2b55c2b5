"""``python -m lib_lora_train``: see :mod:`lib_lora_train.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
