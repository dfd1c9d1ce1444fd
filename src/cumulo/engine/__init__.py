"""The in-process inference engine: model loading, continuous batching, KV cache,
generation, sampling and embeddings (torch is imported only by its modules)."""

__all__ = [
    "demo",
    "detok",
    "embeddings",
    "generate",
    "hf",
    "kvcache",
    "loader",
    "lora",
    "params",
    "sampling",
    "scheduler",
    "stats",
]
