"""`python -m sendqueue.services.cli ...` is the `sendqueue` command."""

from sendqueue.services.cli.main import entry

entry()
