"""secfl._internal.worker: calls run in order on one daemon thread, kept across calls;
a call that raises does not stop the next; drain waits for what was submitted; a
call that never returns does not keep the process from exiting."""

from __future__ import annotations

import subprocess
import sys
import threading

from secfl._internal.worker import Worker


def named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_calls_run_in_order_on_one_kept_daemon_thread() -> None:
    worker = Worker("test-worker-order")
    seen: list[tuple[int, str]] = []
    for i in range(200):
        worker.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    assert worker.drain(10)
    assert [i for i, _ in seen] == list(range(200))
    assert {name for _, name in seen} == {"test-worker-order"}
    (thread,) = named("test-worker-order")
    assert thread.daemon
    worker.submit(lambda: None)
    assert worker.drain(10)
    assert named("test-worker-order") == [thread]  # the same thread, not a new one


def test_a_failing_call_does_not_stop_the_next() -> None:
    worker = Worker("test-worker-fail")
    done: list[int] = []

    def fail() -> None:
        raise RuntimeError("a bug")

    worker.submit(fail)
    worker.submit(lambda: done.append(1))
    assert worker.drain(10)
    assert done == [1]


def test_drain_times_out_while_a_call_runs() -> None:
    worker = Worker("test-worker-drain")
    release = threading.Event()
    worker.submit(release.wait)
    assert not worker.drain(0.1)
    release.set()
    assert worker.drain(10)


def test_a_call_that_never_returns_does_not_keep_the_process_alive() -> None:
    code = (
        "import threading\n"
        "from secfl._internal.worker import Worker\n"
        "w = Worker('hung')\n"
        "w.submit(threading.Event().wait)\n"
        "print('exiting', flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "exiting"


def test_closed_its_thread_ends_once_idle_and_a_later_call_starts_another() -> None:
    worker = Worker("test-worker-close")
    release = threading.Event()
    done: list[int] = []
    worker.submit(release.wait)
    worker.submit(lambda: done.append(1))
    (thread,) = named("test-worker-close")
    worker.close()  # does not wait: the queued call still runs
    release.set()
    thread.join(10)
    assert not thread.is_alive() and done == [1]
    worker.submit(lambda: done.append(2))
    assert worker.drain(10) and done == [1, 2]
    (again,) = named("test-worker-close")
    assert again is not thread
    worker.close()
    again.join(10)
    assert not again.is_alive()


def test_a_submit_after_close_runs_after_the_call_still_running_and_reopens() -> None:
    """Closed while a call runs, then given another: that one runs after it, in order,
    and the thread stays for further calls (the worker is open again)."""
    worker = Worker("test-worker-reopen")
    release = threading.Event()
    order: list[str] = []
    worker.submit(lambda: (release.wait(), order.append("first")))
    worker.close()
    worker.submit(lambda: order.append("second"))
    release.set()
    assert worker.drain(10) and order == ["first", "second"]
    (thread,) = named("test-worker-reopen")
    worker.submit(lambda: order.append("third"))
    assert worker.drain(10) and order[-1] == "third"
    assert named("test-worker-reopen") == [thread]
    worker.close()
    thread.join(10)
    assert not thread.is_alive()
