"""Observability: metrics, dashboard, alert rules, Prometheus, structured logs."""
