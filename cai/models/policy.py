"""Renamed to :mod:`cai.models.retry`; this re-export goes once cai/server/client.py imports from there."""

from cai.models.retry import CallPolicy, RateLimiter, RetryConfig, backoff_delay

__all__ = ["CallPolicy", "RateLimiter", "RetryConfig", "backoff_delay"]
