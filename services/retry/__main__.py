"""`python -m sendqueue.services.retry --config FILE` runs the retry service alone."""

import sys

from sendqueue.services.cli.main import main

sys.exit(main(["retry", *sys.argv[1:]]))
