"""Who is calling: API keys, the master key, bearer and SigV4 authentication, tenants, and
cache invalidation across replicas."""

__all__ = ["auth", "invalidation", "keys", "masterkey", "sigv4"]
