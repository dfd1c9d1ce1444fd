"""How much a caller may use: rate limits, budgets and prices, in memory or shared through
Redis (`factory` picks the backend)."""

__all__ = ["budgets", "budgets_redis", "factory", "limits", "limits_redis", "pricing"]
