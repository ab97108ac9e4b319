"""Routing: a model name is a route over deployments, with failover, circuit breakers, weighted,
sticky, latency- and cost-aware choice, and data-classification limits on where a call may go."""
