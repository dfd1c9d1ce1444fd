"""cumulo's CPU kernels (engine/cpu_kernels.c): each against the PyTorch computation it
replaces, on odd sizes (tails of every vector loop), from several threads at once, and
the decode forward built on them against the PyTorch one."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cumulo.engine import cpu
from cumulo.engine.fastpath import FastDecoder
from cumulo.engine.kvcache import KVLayout, SlotCache
from cumulo.engine.loader import load_causal_lm

K = cpu.kernels()
pytestmark = pytest.mark.skipif(K is None, reason="no AVX2 CPU or no C compiler")
BF16 = torch.bfloat16


def bf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).to(BF16)


def close(got: torch.Tensor, want: torch.Tensor, rel: float = 0.02) -> bool:
    """Equal to bfloat16 rounding (relative to the largest value)."""
    err = (got.float() - want.float()).abs().max().item()
    return err <= rel * max(want.float().abs().max().item(), 1e-6)


def linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    r: torch.Tensor | None,
    exact: bool = False,
) -> torch.Tensor:
    assert K is not None
    y = torch.empty(x.shape[0], w.shape[0], dtype=BF16)
    K.linear(
        x.data_ptr(),
        w.data_ptr(),
        None if b is None else b.data_ptr(),
        None if r is None else r.data_ptr(),
        y.data_ptr(),
        x.shape[0],
        w.shape[0],
        x.shape[1],
        exact,
        2,
    )
    return y


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 17])
@pytest.mark.parametrize("n_k", [(13, 70), (64, 896), (7, 32)])
def test_linear_is_the_matrix_product_with_bias_and_residual(
    rows: int, n_k: tuple[int, int]
) -> None:
    torch.manual_seed(rows)
    n, k = n_k
    x, w, b, r = bf(rows, k), bf(n, k, scale=0.1), bf(n), bf(rows, n)
    want = x.float() @ w.float().T
    assert close(linear(x, w, None, None), want)
    with_bias = (want + b.float()).to(BF16)
    assert close(linear(x, w, b, None), with_bias)
    assert close(linear(x, w, b, r), r + with_bias)  # the residual add, rounded as PyTorch
    # Exact: each row bit for bit as alone, whatever the others.
    for i in range(rows):
        alone = linear(x[i : i + 1].contiguous(), w, b, r[i : i + 1].contiguous())
        assert torch.equal(linear(x, w, b, r, exact=True)[i : i + 1], alone)


def test_rms_norm_and_gated_activation_match_pytorch() -> None:
    assert K is not None
    torch.manual_seed(1)
    x, weight = bf(3, 77, scale=3.0), bf(77)
    y = torch.empty_like(x)
    K.rms_norm(x.data_ptr(), weight.data_ptr(), y.data_ptr(), 3, 77, 1e-6, 2)
    x32 = x.float()
    want = weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(BF16)
    assert close(y, want, rel=0.01)
    gu = bf(3, 2 * 45, scale=4.0)
    act = torch.empty(3, 45, dtype=BF16)
    K.silu_mul(gu.data_ptr(), act.data_ptr(), 3, 45, 2)
    assert close(act, F.silu(gu[:, :45]) * gu[:, 45:], rel=0.01)


def test_rotary_cache_write_and_attention_match_pytorch() -> None:
    assert K is not None
    torch.manual_seed(2)
    batch, heads, kv_heads, dim, cols, lo = 2, 4, 2, 48, 40, 1
    slots = lo + batch
    keys = bf(slots, kv_heads, cols, dim)
    values = bf(slots, kv_heads, cols, dim)
    qkv = bf(batch, (heads + 2 * kv_heads) * dim)
    angle = torch.rand(batch, dim // 2) * 6
    cos = torch.cat([angle.cos(), angle.cos()], -1).to(BF16)
    sin = torch.cat([angle.sin(), angle.sin()], -1).to(BF16)
    write = torch.tensor([5, 30])
    want_keys, want_values = keys.clone(), values.clone()
    qk = qkv[:, : (heads + kv_heads) * dim].view(batch, heads + kv_heads, dim)
    half = dim // 2
    rotated = torch.cat([-qk[..., half:], qk[..., :half]], -1)
    qk = qk * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)
    for b in range(batch):
        want_keys[lo + b, :, write[b]] = qk[b, heads:]
        want_values[lo + b, :, write[b]] = qkv[b, (heads + kv_heads) * dim :].view(kv_heads, dim)
    K.rope_write(
        qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), keys.data_ptr(), values.data_ptr(),
        write.data_ptr(), lo, batch, heads, kv_heads, dim, cols,
    )  # fmt: skip
    assert close(qkv[:, : heads * dim].view(batch, heads, dim), qk[:, :heads], rel=0.01)
    assert torch.equal(keys, want_keys) or close(keys, want_keys, rel=0.01)
    assert torch.equal(values, want_values)
    reads = write + 1  # each row reads up to its own new column
    out = torch.empty(batch, heads * dim, dtype=BF16)
    width = qkv.shape[1]
    K.attention(
        qkv.data_ptr(), width, keys.data_ptr(), values.data_ptr(), out.data_ptr(),
        reads.data_ptr(), lo, batch, heads, kv_heads, dim, cols, dim**-0.5, 2,
    )  # fmt: skip
    for b in range(batch):
        n = int(reads[b])
        q = qkv[b, : heads * dim].view(kv_heads, heads // kv_heads, dim).float()
        want = F.scaled_dot_product_attention(
            q, keys[lo + b, :, :n].float(), values[lo + b, :, :n].float(), scale=dim**-0.5
        )
        assert close(out[b].view(kv_heads, heads // kv_heads, dim), want, rel=0.02)


def test_calls_from_several_threads_at_once_are_each_right() -> None:
    torch.manual_seed(3)
    w = bf(4099, 256, scale=0.1)
    xs = [bf(1 + i % 3, 256) for i in range(8)]
    wants = [(x.float() @ w.float().T) for x in xs]
    bad: list[int] = []

    def work(i: int) -> None:
        for _ in range(20):
            if not close(linear(xs[i], w, None, None), wants[i]):
                bad.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_the_library_is_built_once_and_a_failed_build_says_why(tmp_path: Path) -> None:
    cc = cpu.compiler()
    assert cc is not None
    target = cpu.target_flags()
    assert target is not None
    first = cpu.build(tmp_path, cc, target)
    stamp = first.stat().st_mtime_ns
    assert cpu.build(tmp_path, cc, target) == first and first.stat().st_mtime_ns == stamp
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: no such flag' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="no such flag"):
        cpu.build(tmp_path / "other", str(broken), target)


def test_decode_forward_on_the_kernels_equals_pytorch_to_rounding(demo_dir: Path) -> None:
    lm = load_causal_lm(demo_dir, "bfloat16")
    layout = KVLayout.for_model(lm.model.config, 4, 64, BF16)
    fast = FastDecoder(lm.model, SlotCache(layout, torch.device("cpu")))
    plain = FastDecoder(lm.model, SlotCache(layout, torch.device("cpu")))
    assert fast.kernels is not None
    plain.kernels = None
    torch.manual_seed(4)
    with torch.inference_mode():
        for step in range(12):
            ids = torch.randint(0, 200, (3,))
            pos = torch.full((3,), step)
            got = fast.forward(0, ids, pos, pos.clone(), step + 1).clone()
            want = plain.forward(0, ids, pos, pos.clone(), step + 1)
            assert close(got, want, rel=0.05), step
            logits = fast.head(got)
            assert logits is not None and close(logits, lm.model.lm_head(want), rel=0.05)


def test_argmax_is_torch_argmax_ties_to_the_first() -> None:
    assert K is not None
    torch.manual_seed(5)
    logits = bf(5, 1003, scale=3.0)
    logits[1, 17] = logits[1, 900] = 99.0  # a tie: the first one wins, as in PyTorch
    logits[2] = -1.0
    out = torch.empty(5, dtype=torch.int64)
    K.argmax(logits.data_ptr(), out.data_ptr(), 5, 1003, 2)
    assert out.tolist() == logits.argmax(dim=-1).tolist()
    assert out[1] == 17 and out[2] == 0


def test_a_forked_child_computes_with_helpers_of_its_own() -> None:
    import os

    torch.manual_seed(6)
    w, x = bf(513, 64, scale=0.1), bf(1, 64)
    want = linear(x, w, None, None)  # the parent's helpers are running now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the kernels work (no helper to wait for)
        ok = torch.equal(linear(x, w, None, None), want)
        os._exit(0 if ok else 1)
    for _ in range(600):  # a child waiting for helpers it does not have would hang
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in a kernel call")
    assert os.waitstatus_to_exitcode(status) == 0


def test_prefill_projections_run_on_the_kernels_and_training_keeps_pytorch(
    demo_dir: Path,
) -> None:
    lm = load_causal_lm(demo_dir, "bfloat16")
    q_proj = lm.model.get_decoder().layers[0].self_attn.q_proj
    torch.manual_seed(7)
    x = bf(2, 37, q_proj.in_features)  # a prefill chunk: rows of many tokens
    want = F.linear(x, q_proj.weight, q_proj.bias)
    layout = KVLayout.for_model(lm.model.config, 4, 64, BF16)
    fast = FastDecoder(lm.model, SlotCache(layout, torch.device("cpu")))
    real = fast.kernels
    assert real is not None
    calls: list[int] = []

    class Counting:  # the kernels, counting the rows of each product
        def __getattr__(self, name: str) -> object:
            if name == "linear":
                return lambda *args: calls.append(args[5]) or real.linear(*args)
            return getattr(real, name)

    fast.kernels = Counting()  # type: ignore[assignment]
    try:
        with torch.inference_mode():
            got = q_proj(x)
        rows = 2 * 37
        on_kernels = real.max_rows is None or rows <= real.max_rows
        assert calls == ([rows] if on_kernels else [])
        assert got.shape == want.shape and close(got, want)
        calls.clear()
        with torch.enable_grad():  # training: autograd needs PyTorch's own product
            trained = q_proj(x.requires_grad_())
        assert calls == [] and trained.requires_grad and torch.equal(trained, want)
    finally:
        fast.kernels = real


def test_each_instruction_set_has_its_build() -> None:
    """The CPU's best instruction set is chosen, and every set's sources compile (the
    AVX-512 build, too, on a machine that cannot run it)."""
    have_512, have_avx2 = (needs for needs, _ in cpu.TARGETS)
    assert cpu.target_flags() is not None
    cc = cpu.compiler()
    assert cc is not None
    for needs, flags in cpu.TARGETS:
        probe = subprocess.run(
            [cc, *flags, "-O1", "-fsyntax-only", "-x", "c", str(cpu.SOURCE)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert probe.returncode == 0, (needs, probe.stderr[-2000:])
    assert cpu.TARGETS[0][0] == have_512 and "avx512_bf16" in have_512
    assert "avx2" in have_avx2 and "fma" in have_avx2


def test_the_row_limit_follows_the_instruction_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert K is not None
    assert K.max_rows == (cpu.KERNEL_ROWS_BF16 if cpu.bf16_dot() else None)
    for flags, want in (
        ({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"}, cpu.TARGETS[0][1]),
        ({"avx2", "fma", "avx512f"}, cpu.TARGETS[1][1]),
        ({"avx", "sse4_2"}, None),
    ):
        monkeypatch.setattr(cpu, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert cpu.target_flags() == want
