"""The Gram step's speed-ups change nothing but speed: both slab layouts, the threaded
eigenvalues and the allocator setting give what the plain computation gives."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from genentropy_cli.core import logdet, threads
from genentropy_cli.core.logdet import Workspace, batched_eigvalsh, gram_eigenvalues, gram_matrices
from genentropy_cli.defaults import EIGVALSH_THREAD_MIN_WORK, SYMMETRIC_GRAM_MIN_DIM, TRANSPOSED_GRAM_MAX_DIM
from genentropy_cli.run.allocator import OPT_OUT_VARIABLE


def exact_gram(columns: torch.Tensor) -> torch.Tensor:
    per_sample = columns.double().permute(1, 0, 2)  # (B, d, D)
    return per_sample @ per_sample.transpose(1, 2)


@pytest.mark.parametrize("dim", [3, TRANSPOSED_GRAM_MAX_DIM, TRANSPOSED_GRAM_MAX_DIM + 1, 40])
@pytest.mark.parametrize("slab_bytes", [1, 5000, None])
def test_gram_matrices_either_layout_any_slab(dim, slab_bytes):
    columns = torch.randn(dim, 9, 23, generator=torch.Generator().manual_seed(dim))
    gram = gram_matrices(columns, slab_bytes, Workspace())
    torch.testing.assert_close(gram, exact_gram(columns), rtol=1e-14, atol=1e-13)
    assert torch.equal(gram, gram.transpose(1, 2)) or torch.allclose(gram, gram.transpose(1, 2), rtol=1e-15)


@pytest.mark.parametrize("dim", [SYMMETRIC_GRAM_MIN_DIM, SYMMETRIC_GRAM_MIN_DIM + 1, 301])
def test_symmetric_blocks_give_the_product(dim):
    """From SYMMETRIC_GRAM_MIN_DIM on a CPU forms J^T J by blocks above the diagonal, mirrored:
    the same entries as one product (odd sizes split unevenly), exactly symmetric."""
    columns = torch.randn(dim, 3, 150, generator=torch.Generator().manual_seed(dim))
    gram = gram_matrices(columns, workspace=Workspace())
    torch.testing.assert_close(gram, exact_gram(columns), rtol=1e-13, atol=1e-12)
    assert torch.equal(gram, gram.transpose(1, 2))
    out = torch.full((3, dim, dim), float("nan"), dtype=torch.float64)
    logdet.symmetric_gram_into(columns.double().permute(1, 0, 2), out)  # every entry written
    torch.testing.assert_close(out, exact_gram(columns), rtol=1e-13, atol=1e-12)


def test_torch_kernels_run_on_threads_that_end(monkeypatch):
    """Eigenvalues by torch's solver split over threads that end with the call: a live OpenMP
    team per pool thread throttles every team's waiting (threads.run_parts)."""
    import threading

    workers: list[threading.Thread] = []
    original = logdet._eigvalsh_into
    monkeypatch.setattr(logdet, "_eigvalsh_into",
                        lambda *args: (workers.append(threading.current_thread()), original(*args)))
    dim = 80  # above NUMPY_EIGVALSH_MAX_DIM: torch's solver
    gram = exact_gram(torch.randn(dim, 4, 100, generator=torch.Generator().manual_seed(0)))
    torch.set_num_threads(2)  # the conftest fixture restores the session's count
    batched_eigvalsh(gram)
    assert len(workers) == 2 and threading.main_thread() not in workers  # two parts, off the main thread
    assert not any(worker.is_alive() for worker in workers)


def test_the_two_layouts_agree(monkeypatch):
    columns = torch.randn(12, 17, 300, generator=torch.Generator().manual_seed(1))
    transposed = gram_matrices(columns)
    monkeypatch.setattr(logdet, "TRANSPOSED_GRAM_MAX_DIM", 0)
    plain = gram_matrices(columns)
    torch.testing.assert_close(transposed, plain, rtol=1e-14, atol=1e-12)


def test_float64_columns_need_no_copy_and_agree():
    columns = torch.randn(6, 5, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(gram_matrices(columns), exact_gram(columns), rtol=1e-14, atol=1e-13)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_eigenvalues_equal_one_call(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dim, batch in ((7, 1), (7, EIGVALSH_THREAD_MIN_WORK // 7**3 - 1), (7, EIGVALSH_THREAD_MIN_WORK // 7**3),
                           (7, 1001), (60, 2), (60, 3), (60, 5)):  # below and above the work threshold
            gram = exact_gram(torch.randn(dim, batch, 80, generator=torch.Generator().manual_seed(batch)))
            # a threaded split may run LAPACK through another code path (MKL without CNR, other
            # thread counts): the same eigenvalues to round-off, never demanded bit for bit
            reference = torch.linalg.eigvalsh(gram)
            scale = reference.abs().amax(dim=-1, keepdim=True)
            torch.testing.assert_close(batched_eigvalsh(gram) / scale, reference / scale, rtol=0, atol=1e-12)
    finally:
        torch.set_num_threads(before)


def test_spectrum_of_a_known_jacobian():
    """J = Q diag(sigma) with orthonormal Q: eigenvalues sigma^2 whatever the layout or threads."""
    sigma = torch.tensor([1e-3, 0.5, 2.0, 30.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    jacobian = q * sigma  # (D, d)
    columns = jacobian.T.unsqueeze(1).expand(4, 40, 50).contiguous()  # (d, B, D): 40 samples alike
    spectrum = gram_eigenvalues(columns)
    torch.testing.assert_close(spectrum.eigenvalues, (sigma**2).expand(40, 4), rtol=1e-9, atol=1e-14)


def _child(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items()
                   if key not in (OPT_OUT_VARIABLE, "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environment, check=True).stdout.strip()


CHILD = """
from genentropy_cli.run.allocator import keep_freed_memory
print(keep_freed_memory(), keep_freed_memory())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_applies_once_and_respects_opt_outs():
    assert _child(CHILD) == "True True"
    assert _child(CHILD, **{OPT_OUT_VARIABLE: "0"}) == "False False"
    assert _child(CHILD, MALLOC_TRIM_THRESHOLD_="1000000") == "False False"  # the user's own tuning stands


RELEASE = """
import ctypes, ctypes.util, torch
from genentropy_cli.run.allocator import keep_freed_memory, release_freed_memory

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print("no mallinfo2")
    raise SystemExit
libc.mallinfo2.restype = MallInfo2
keep_freed_memory()
before = libc.mallinfo2()
blocks = [torch.ones(4 * 2**20) for _ in range(40)]  # 40 x 16 MiB, from the heap (below the mmap threshold)
del blocks
kept = libc.mallinfo2()
released = release_freed_memory()
print((kept.fordblks - before.fordblks) // 2**20 >= 600, released)
"""
"""glibc's own accounts: ``mallinfo2().fordblks``, the bytes free in the heap (kept, not returned
to the OS), and malloc_trim's answer that it returned memory. The resident size a kernel reports
also moves with page faults, transparent huge pages and reclaim, so it is not asserted on (nor
is the heap's size: where the heap could not grow in one piece, trimming gives pages back
without shrinking it)."""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_memory_is_kept_during_a_run_and_released_after():
    output = _child(RELEASE)
    if output == "no mallinfo2":
        pytest.skip("glibc older than 2.33 (or not glibc): no mallinfo2 to read the heap's accounting")
    assert output == "True True"  # the 640 MiB freed were kept in the heap, then malloc_trim gave memory back


def test_releasing_is_one_malloc_trim_and_only_where_the_thresholds_were_applied(monkeypatch):
    from genentropy_cli.run import allocator

    calls: list[int] = []

    class FakeLibc:
        def __init__(self):
            self.malloc_trim = self

        def __call__(self, pad: int) -> int:
            calls.append(pad)
            return 1

    monkeypatch.setitem(allocator._state, "libc", FakeLibc())
    monkeypatch.setitem(allocator._state, "applied", True)
    assert allocator.release_freed_memory() is True and calls == [0]  # everything above the heap's use
    monkeypatch.setitem(allocator._state, "applied", False)  # the user's own settings, or opted out
    assert allocator.release_freed_memory() is False and calls == [0]


def relative_to_largest(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues over each matrix's largest: round-off is relative to it (LAPACK's backward error)."""
    return eigenvalues / eigenvalues.abs().amax(dim=-1, keepdim=True)


def _child_pool_and_eigenvalues(gram: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """In the forked child: the eigenvalues, and whether the pool used is the child's own."""
    eigenvalues = batched_eigvalsh(gram)
    pool = threads._POOL
    return pool is not None and pool[0] == os.getpid(), eigenvalues


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_threaded_eigenvalues_work_in_a_forked_child():
    """A child forked after the pool exists has none of its threads: it must make its own. The
    batch is twice ``EIGVALSH_THREAD_MIN_WORK`` and two threads are asked for, so the pool is
    what computes it, in the parent and in the child (a stale pool there hangs: the timeout)."""
    torch.set_num_threads(2)  # the conftest fixture restores the session's count
    dim = 8
    batch = 2 * EIGVALSH_THREAD_MIN_WORK // dim**3
    gram = exact_gram(torch.randn(dim, batch, 12, generator=torch.Generator().manual_seed(4)))
    expected = relative_to_largest(torch.linalg.eigvalsh(gram))
    threads._POOL = None
    parent = batched_eigvalsh(gram)
    assert threads._POOL is not None and threads._POOL[0] == os.getpid()  # the pool ran
    # split or not, LAPACK decomposes each matrix alike; round-off of float64 relative to the
    # largest eigenvalue (1e-12: ~1e4 eps) is all that may differ (MKL may take another path)
    torch.testing.assert_close(relative_to_largest(parent), expected, rtol=0, atol=1e-12)
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(1) as children:
        own_pool, result = children.apply_async(_child_pool_and_eigenvalues, (gram,)).get(timeout=60)
    assert own_pool
    torch.testing.assert_close(relative_to_largest(result), expected, rtol=0, atol=1e-12)
