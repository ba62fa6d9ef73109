"""`python -m sendqueue.services.sender --config FILE` runs the sender service alone."""

import sys

from sendqueue.services.cli.main import main

sys.exit(main(["sender", *sys.argv[1:]]))
