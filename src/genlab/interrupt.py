"""A stop request that long loops inside one evaluation step can honour.

Lightning checks for SIGTERM only between batches. A single test batch of genlab can take
minutes on a CPU (the IWAE bound with thousands of importance samples, the DDPM variational
bound over T timesteps, thousands of samples for the FID), longer than a cluster's grace period
(often 30-60 s). While a run evaluates, genlab.callbacks registers a predicate here ("has this
trainer received SIGTERM?") and the exception to raise; those loops call `poll()` once per
chunk, so the run stops within about one chunk of work. Torch-free on purpose: the tensor-math
modules (genlab.diffusion, genlab.metrics) may import it.
"""

from __future__ import annotations

from collections.abc import Callable

_watch: tuple[Callable[[], bool], Callable[[], BaseException]] | None = None


def watch(stop_requested: Callable[[], bool], exception: Callable[[], BaseException]) -> None:
    """From now on `poll()` raises `exception()` once `stop_requested()` is true."""
    global _watch
    _watch = (stop_requested, exception)


def unwatch() -> None:
    global _watch
    _watch = None


def poll() -> None:
    """Raise the registered exception if a stop was requested; otherwise return at once."""
    if _watch is not None and _watch[0]():
        raise _watch[1]()
