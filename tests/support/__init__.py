"""Helpers shared by the tests: the cumulo subprocess and its configs."""

from support.cumulo import (
    AZURE_KEY,
    CUMULO_BIN,
    TEST_MAX_BODY,
    TEST_MAX_EMBEDDING_INPUTS,
    TEST_MAX_MESSAGES,
    UPSTREAM_KEY,
    ApiKey,
    CumuloServer,
    clean_env,
    free_port,
    gateway_config,
    openai_deployment,
    start_cumulo,
    write_config,
)
from support.waiting import eventually, wait_until

__all__ = [
    "AZURE_KEY",
    "CUMULO_BIN",
    "TEST_MAX_BODY",
    "TEST_MAX_EMBEDDING_INPUTS",
    "TEST_MAX_MESSAGES",
    "UPSTREAM_KEY",
    "ApiKey",
    "CumuloServer",
    "clean_env",
    "eventually",
    "free_port",
    "gateway_config",
    "openai_deployment",
    "start_cumulo",
    "wait_until",
    "write_config",
]
