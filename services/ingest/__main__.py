"""`python -m sendqueue.services.ingest --config FILE` runs the ingest service alone."""

import sys

from sendqueue.services.cli.main import main

sys.exit(main(["ingest", *sys.argv[1:]]))
