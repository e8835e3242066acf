"""DataLoader worker processes that survive a cluster's stop signal, so the main process can checkpoint first."""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import signal as signals
from collections.abc import Iterable, Iterator

STOP_SIGNALS = {signals.SIGTERM, signals.SIGINT}


@contextlib.contextmanager
def batches(loader: Iterable) -> Iterator:
    """Iterate a DataLoader and stop its worker processes when the loop ends, on errors too: the workers ignore
    SIGTERM (see worker_init_fn), so they must be told to stop rather than terminated at exit.

    The workers start with SIGTERM and SIGINT blocked, so a signal that arrives before worker_init_fn has run
    waits and is then ignored instead of killing the worker."""
    previous = signals.pthread_sigmask(signals.SIG_BLOCK, STOP_SIGNALS)
    try:
        iterator = iter(loader)
    finally:
        signals.pthread_sigmask(signals.SIG_SETMASK, previous)
    try:
        yield iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


@atexit.register
def stop_leftover_loader_workers() -> None:
    """At exit, kill daemonic child processes (DataLoader workers whose loader was never closed): they ignore the
    SIGTERM that multiprocessing's own exit handler, which runs after this one, sends before waiting for them."""
    leftover = [process for process in multiprocessing.active_children() if process.daemon]
    if leftover:
        signals.signal(signals.SIGCHLD, signals.SIG_DFL)  # the loaders' worker-death check would report the kill
        for process in leftover:
            process.kill()


def ignore_stop_signals() -> None:
    """In a worker: ignore SIGTERM and SIGINT (blocked since the worker started, see batches)."""
    for signum in STOP_SIGNALS:
        signals.signal(signum, signals.SIG_IGN)
    signals.pthread_sigmask(signals.SIG_UNBLOCK, STOP_SIGNALS)
