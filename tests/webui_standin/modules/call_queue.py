"""Stand-in for WebUI 1.10.1 ``modules/call_queue.py``: ``queue_lock = fifo_lock.FIFOLock()``.

The real lock serves waiting threads first in, first out. What code using it must respect is its
interface: ``acquire(blocking=True)`` takes no ``timeout`` (a TypeError if given one), ``release()``,
and use as a context manager.
"""

import collections
import threading


class FIFOLock:
    """First in, first out lock with the WebUI's interface (no timeout)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._guard = threading.Lock()
        self._waiting = collections.deque()

    def acquire(self, blocking=True):
        with self._guard:
            if self._lock.acquire(False):
                return True
            if not blocking:
                return False
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()
        return self._lock.acquire()

    def release(self):
        with self._guard:
            if self._waiting:
                self._waiting.popleft().set()
            self._lock.release()

    def locked(self):
        return self._lock.locked()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


queue_lock = FIFOLock()
