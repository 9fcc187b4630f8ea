"""pipeline/signals.py: SIGTERM raises KeyboardInterrupt inside `sigterm_as_interrupt`, and the previous handler is
back after it."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pipeline.signals import sigterm_as_interrupt


def test_sigterm_interrupts_inside_and_the_previous_handler_comes_back():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt, match="signal 15"), sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here at the latest
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert seen == [signal.SIGTERM]  # the handler from before, not an interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_nothing_changes():
    before = signal.getsignal(signal.SIGTERM)
    inside = []

    def job():
        with sigterm_as_interrupt():
            inside.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert inside == [before]
