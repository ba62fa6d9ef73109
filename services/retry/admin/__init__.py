"""The retry service's admin surface: the HTTP API (`api.py` wires it), its OpenAPI
document, tokens, input validation, the audit log, the queue overview and the console."""
