"""One BLAS thread for the small dense algebra of the model fits."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def single_threaded_blas():
    """Limits BLAS to one thread inside the block.

    The fits factorise matrices of a few hundred rows, where a second thread gains nothing; on a machine whose
    cores are busy, OpenBLAS's threads then wait on each other and a fit took 16× longer (benchmarks/
    bench_analyze_agh.py: mixed models 11.0 s against 0.64 s).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
