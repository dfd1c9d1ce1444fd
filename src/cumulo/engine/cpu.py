"""cumulo's CPU kernels for bfloat16 decode steps (`cpu_kernels.c`), built on first use.

On an x86-64 CPU with AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake, Sapphire
Rapids and later), or else with AVX2 and FMA (AMD Zen 1-3, Intel Haswell and later), the
kernels are compiled for it with the system C compiler into a shared library cached
under `CUMULO_HOME/cache/kernels/` (named by the hash of the sources, the flags and the
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
# The file `SOURCE` includes for each instruction set (the build's hash covers them).
HEADERS = tuple(SOURCE.with_name(name) for name in ("cpu_avx512.h", "cpu_avx2.h"))
# The instruction sets, best first: (the CPU's flags in /proc/cpuinfo, compiler flags).
TARGETS = (
    (
        frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}),
        ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"),
    ),
    (frozenset({"avx2", "fma"}), ("-mavx2", "-mfma")),
)
# With AVX-512 BF16: the most rows of a product on the kernels (measured on the 0.5B-shaped
# bench model, against PyTorch's: 1.8x at 1 row, 1.6x at 16, 1.2x at 32, about even at 64).
KERNEL_ROWS_BF16 = 32

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

    def __init__(self, path: Path, max_rows: int | None = None) -> None:
        self.path = path
        # The most rows for which a product here beats PyTorch's (None: any number).
        self.max_rows = max_rows
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


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (Linux's /proc/cpuinfo; none elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def target_flags() -> tuple[str, ...] | None:
    """The compiler flags of the best instruction set this CPU has (None: none of them)."""
    have = cpu_flags()
    for needs, flags in TARGETS:
        if have >= needs:
            return flags
    return None


def bf16_dot() -> bool:
    """Whether this CPU has the bfloat16 dot-product instruction (AVX-512 BF16)."""
    return "avx512_bf16" in cpu_flags()


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")


def build(cache: Path, cc: str, isa: tuple[str, ...]) -> Path:
    """The library built from `SOURCE` with `isa` (the instruction set's compiler flags)
    under `cache` (built now unless already there)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    flags = ("-O3", *isa, "-pthread")
    key = hashlib.sha256()
    sources = [path.read_bytes() for path in (SOURCE, *HEADERS)]
    for part in (*sources, " ".join(flags).encode(), version.stdout.encode()):
        key.update(part)
    target = cache / f"cumulo-kernels-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = Path(tmp) / target.name
        cmd = [cc, *flags, "-shared", "-fPIC", "-o", str(built), str(SOURCE), "-lm"]
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
    isa = target_flags()
    if isa is None:
        log.info("cpu kernels: this CPU lacks AVX2; decoding with PyTorch operators")
        return None
    cc = compiler()
    if cc is None:
        log.warning("cpu kernels: no C compiler (cc); decoding with PyTorch operators")
        return None
    try:
        path = build(cumulo_home() / "cache" / "kernels", cc, isa)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("cpu kernels: the build failed; decoding with PyTorch operators: %s", exc)
        return None
    # With AVX-512 BF16, PyTorch's bf16 product (oneDNN) catches up from about 32 rows
    # (compute-bound there either way); without it, PyTorch's runs at a fraction of the
    # kernels' speed at any number of rows (10 against 60 GMAC/s on 256 rows, on AMD Zen 3),
    # prefills included.
    return Kernels(path, max_rows=KERNEL_ROWS_BF16 if bf16_dot() else None)
