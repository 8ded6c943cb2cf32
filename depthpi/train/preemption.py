"""Preemption: save a checkpoint at a step boundary before the job is requeued.

SLURM signals a job ``signal_delay_s`` before its time limit or when it is preempted
(``--signal=USR2@120``). submitit's handler requeues at once, from inside whatever the
main thread was doing, so everything since the last periodic checkpoint is lost.
:class:`StopRequest` takes the signal instead: its handler only sets a flag; the engine
checks the flag at its log points through accelerate's trigger (``set_trigger`` on the
signalled rank, ``check_trigger`` on all: every rank stops at the same step), saves a checkpoint and raises :class:`Preempted`; the caller then runs the
handler it displaced (submitit's requeue). Should the engine not reach a log point within
``grace_s`` (a long evaluation), a watchdog hands the signal to that handler anyway.
"""
from __future__ import annotations

import logging
import os
import signal
import threading


log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised by the engine after saving the checkpoint a stop request asked for."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step} for preemption; checkpoint saved")
        self.step = step


class StopRequest:
    """A flag set by ``signum``; :meth:`install` puts it in place of the current handler.

    Args:
        signum: the signal to take (submitit's preemption signal, SIGUSR2 by default).
        grace_s: seconds the engine has to reach a step boundary before the displaced
            handler runs anyway; None waits forever.
    """

    def __init__(self, signum: int = signal.SIGUSR2, grace_s: float | None = 60.0):
        self.signum, self.grace_s = signum, grace_s
        self.previous = None
        self._event = threading.Event()
        self._handled = threading.Event()
        self._passing_on = threading.Event()

    def install(self) -> StopRequest:
        self.previous = signal.signal(self.signum, self._on_signal)
        return self

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(self.signum, self.previous)

    def _on_signal(self, signum, frame) -> None:
        if self._passing_on.is_set():  # the watchdog's re-sent signal: handlers run in the main thread only
            self.hand_over(frame)
            return
        if self._event.is_set():
            return
        self._event.set()
        # Only the flag is touched here: logging from a signal handler can deadlock on the
        # handler lock it interrupted. The engine says what happened when it sees the flag.
        if self.grace_s is not None:
            timer = threading.Timer(self.grace_s, self._give_up)
            timer.daemon = True
            timer.start()

    def _give_up(self) -> None:
        """The engine did not stop in time: re-send the signal, for :meth:`hand_over` in the main thread."""
        if not self._handled.is_set():
            log.warning("no step boundary within %g s of the preemption signal; requeueing without a new "
                        "checkpoint", self.grace_s)
            self._passing_on.set()
            os.kill(os.getpid(), self.signum)

    def requested(self, accelerator) -> bool:
        """Whether any rank was signalled (a collective: every rank calls it at the same step)."""
        if self._event.is_set():
            accelerator.set_trigger()
        return accelerator.check_trigger()

    def hand_over(self, frame=None) -> None:
        """After the checkpoint: run the displaced handler (submitit: requeue, then exit).
        Main thread only, like every signal handler."""
        if self._handled.is_set():
            return
        self._handled.set()
        self.uninstall()
        if callable(self.previous):
            self.previous(self.signum, frame)
