"""Stand-in for WebUI 1.10.1 ``modules/call_queue.py``: ``queue_lock = threading.Lock()``."""

import threading

queue_lock = threading.Lock()
