"""`python -m services.sender --config FILE` runs the sender service alone."""

import sys

from services.cli import main

sys.exit(main(["sender", *sys.argv[1:]]))
