"""Preemption: the signal is deferred to a step boundary, agreed through accelerate's trigger."""
import os
import signal
import time

from accelerate import Accelerator

from depthpi.train.preemption import StopRequest


def test_stop_request_defers_the_signal_and_hands_it_back():
    accelerator = Accelerator(cpu=True)
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        stop = StopRequest(signal.SIGUSR2, grace_s=None).install()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested(accelerator) and calls == []  # taken, not passed on
        stop.hand_over()
        assert calls == [signal.SIGUSR2] and signal.getsignal(signal.SIGUSR2) is not stop._on_signal
        # an engine that never reaches a log point: the watchdog passes the signal on by itself
        slow = StopRequest(signal.SIGUSR2, grace_s=0.2).install()
        os.kill(os.getpid(), signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert calls == [signal.SIGUSR2] * 2 and slow.requested(accelerator)
    finally:
        signal.signal(signal.SIGUSR2, previous)
