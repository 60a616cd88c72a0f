"""A fixture that fails a test which leaves a thread running (pipelines, servers, outputs).

Import it into a test module to apply it to every test there::

    from thread_checks import no_thread_left  # noqa: F401  (autouse fixture)
"""

import threading
import time

import pytest


@pytest.fixture(autouse=True)
def no_thread_left():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            return
        time.sleep(0.02)
    pytest.fail(f"threads left running: {left}")
