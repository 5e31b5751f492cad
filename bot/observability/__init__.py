"""Observability: logging set-up, Prometheus metrics, the audit channel, the /healthz + /metrics server
and the container health check."""
