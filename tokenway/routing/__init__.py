"""Where a call goes: balancers, circuit breakers, health checks and engine metrics."""
