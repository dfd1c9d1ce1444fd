"""cumulo's CPU kernels for bfloat16 decode steps (`cpu_kernels.c`), built on first use.

On a CPU with AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and
later) the kernels are compiled with the system C compiler into a shared library cached
under `CUMULO_HOME/cache/kernels/` (named by the hash of the source, the flags and the
compiler, so a restart loads it at once and an upgrade builds anew) and loaded with
ctypes. They split each call over PyTorch's number of threads (`torch.get_num_threads()`)
with helper threads of their own (see the C file).

`kernels()` is the loaded library, or None where it cannot be used: another CPU, no C
compiler, a failed build (logged once), or `CUMULO_CPU_KERNELS=0` in the environment.
The engine then computes with PyTorch's operators, as on a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cumulo.config import cumulo_home

__all__ = ["Kernels", "kernels"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-pthread")
CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_bf16"})

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "cumulo_linear": [_P, _P, _P, _P, _P, _I, _I, _I, ctypes.c_int, ctypes.c_int],
    "cumulo_rms_norm": [_P, _P, _P, _I, _I, _F, ctypes.c_int],
    "cumulo_rope_write": [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I],
    "cumulo_attention": [_P, _I, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _F, ctypes.c_int],
    "cumulo_silu_mul": [_P, _P, _I, _I, ctypes.c_int],
    "cumulo_argmax": [_P, _P, _I, _I, ctypes.c_int],
}


class Kernels:
    """The loaded library; its functions take raw pointers (`tensor.data_ptr()`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, None
        self.linear = lib.cumulo_linear
        self.rms_norm = lib.cumulo_rms_norm
        self.rope_write = lib.cumulo_rope_write
        self.attention = lib.cumulo_attention
        self.silu_mul = lib.cumulo_silu_mul
        self.argmax = lib.cumulo_argmax


def cpu_supported() -> bool:
    """Whether this CPU has the instructions the kernels use (Linux's /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) >= CPU_FLAGS
    return False


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")


def build(cache: Path, cc: str) -> Path:
    """The library built from `SOURCE` under `cache` (built now unless already there)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), version.stdout.encode()):
        key.update(part)
    target = cache / f"cumulo-kernels-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        cmd = [cc, *FLAGS, "-shared", "-fPIC", "-o", str(built), str(SOURCE), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-2000:] or f"{cc} exited {done.returncode}")
        built.replace(target)  # whole or absent, when several processes build at once
    return target


@functools.cache
def kernels() -> Kernels | None:
    """The kernels for this process, or None (see the module docstring)."""
    if os.environ.get("CUMULO_CPU_KERNELS", "1") == "0":
        return None
    if not cpu_supported():
        log.info("cpu kernels: this CPU lacks AVX-512 BF16; decoding with PyTorch operators")
        return None
    cc = compiler()
    if cc is None:
        log.warning("cpu kernels: no C compiler (cc); decoding with PyTorch operators")
        return None
    try:
        return Kernels(build(cumulo_home() / "cache" / "kernels", cc))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("cpu kernels: the build failed; decoding with PyTorch operators: %s", exc)
        return None
