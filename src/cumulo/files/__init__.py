"""The file store: uploaded files (OpenAI Files API) and the files cumulo's jobs write.

- `store.FileStore`: file records per tenant, content-addressed contents, limits, audit.
- `blobs`: where the contents live (a directory under CUMULO_HOME, or S3-compatible).
- `validate`: checking a file for its purpose (a batch's JSONL), line by line.
"""

from cumulo.files.blobs import BlobStore, LocalBlobs, S3Blobs, blob_store
from cumulo.files.store import (
    PURPOSES,
    SERVICE_PURPOSES,
    UPLOAD_PURPOSES,
    AuditLog,
    FileLimits,
    FilePage,
    FileRecord,
    FileStore,
)
from cumulo.files.validate import (
    BatchCheck,
    BatchLine,
    LineError,
    LineInvalid,
    batch_lines,
    check_batch,
    iter_lines,
    parse_batch_line,
)

__all__ = [
    "PURPOSES",
    "SERVICE_PURPOSES",
    "UPLOAD_PURPOSES",
    "AuditLog",
    "BatchCheck",
    "BatchLine",
    "BlobStore",
    "FileLimits",
    "FilePage",
    "FileRecord",
    "FileStore",
    "LineError",
    "LineInvalid",
    "LocalBlobs",
    "S3Blobs",
    "batch_lines",
    "blob_store",
    "check_batch",
    "iter_lines",
    "parse_batch_line",
]
