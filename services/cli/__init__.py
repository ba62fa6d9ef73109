"""The `sendqueue` command (`main.py`): run the services, queue resources, check a config;
and the operator commands that talk to the admin API (`admin_commands.py`)."""
