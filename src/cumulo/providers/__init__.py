"""Provider adapters, one module per backend kind (see `base.Provider`)."""

__all__ = [
    "anthropic",
    "base",
    "bedrock",
    "http",
    "local",
    "local_adapter",
    "openai",
    "registry",
    "vllm",
    "vllm_fleet",
]
