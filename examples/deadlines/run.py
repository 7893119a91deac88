"""One deadline, three services: A calls B calls C, and all of them stop together.

Run it with no arguments: ``.venv/bin/python examples/deadlines/run.py``. It needs uvicorn
and starlette (in the ``dev`` extra: ``.venv/bin/pip install -e '.[dev]'``) and no network
beyond 127.0.0.1.

- A (this script) calls B under ``meshlib.deadline(1.0)`` through a wrapped client.
- B is a Starlette app served by uvicorn, wrapped in ``meshlib.asgi.MeshMiddleware``;
  it adopts A's budget from the ``x-envoy-expected-rq-timeout-ms`` header and calls C
  through a ``meshlib.AsyncClient``, which sends on what is left.
- C is a WSGI app served by wsgiref, wrapped in ``meshlib.wsgi.MeshMiddleware``; its
  work would take 5 s, but it checks ``meshlib.remaining()`` every 20 ms and answers
  504 as soon as nobody is waiting any more.

The asserts make it a regression check as well as a demo.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import service_b
import service_c
from servers import serve_asgi, serve_wsgi

import meshlib

BUDGET = 1.0

# A and B do not retry. A 504 here means the shared budget is spent, and a retry could
# only get less time than the attempt that just failed. STANDARD would be safe too (its
# backoff never sleeps past the deadline, and an attempt with nothing left is never
# sent), but with jitter it may or may not squeeze in a last hopeless attempt, and the
# example's output would vary from run to run. The timeouts stay STANDARD's (30 s
# total, 10 s per attempt); the 1 s deadline is shorter, so it is what bounds each call.
POLICY = meshlib.Policy(retry=None)


def main() -> None:
    script_started = time.monotonic()
    seen_b: dict[str, Any] = {}
    seen_c: dict[str, Any] = {}
    b_done = threading.Event()
    c_done = threading.Event()

    with (
        serve_wsgi(service_c.make_app(seen_c, c_done)) as c_url,
        serve_asgi(service_b.make_app(c_url, POLICY, seen_b, b_done)) as b_url,
        meshlib.Client(POLICY) as client,
    ):
        print(f"B (uvicorn + Starlette) on {b_url}, C (wsgiref) on {c_url}")
        started = time.monotonic()
        with meshlib.deadline(BUDGET):
            try:
                response = client.get(b_url + "/")
                outcome = f"B answered {response.status_code}"
                status: int | None = response.status_code
            except meshlib.DeadlineExceeded:
                outcome, status = "DeadlineExceeded", None
        elapsed = time.monotonic() - started
        # Had A given up first, B and C might still be finishing: wait for their records.
        b_done.wait(timeout=2.0)
        c_done.wait(timeout=2.0)

    def at(seen: dict[str, Any], key: str) -> str:
        return f"+{seen[key] - started:.3f} s"

    print(f"A: deadline {BUDGET:.3f} s; {outcome} at +{elapsed:.3f} s")
    print(
        f"B: arrived {at(seen_b, 'arrived')} with x-envoy-expected-rq-timeout-ms: "
        f"{seen_b['header']}; adopted {seen_b['adopted']:.3f} s; "
        f"{seen_b['outcome']} at {at(seen_b, 'answered')}"
    )
    print(
        f"C: arrived {at(seen_c, 'arrived')} with x-envoy-expected-rq-timeout-ms: "
        f"{seen_c['header']}; adopted {seen_c['adopted']:.3f} s; stopped at "
        f"{at(seen_c, 'stopped')} after {seen_c['worked']:.3f} s of its "
        f"{service_c.WORK_SECONDS:.0f} s of work; answered {seen_c['status']}"
    )
    print(f"servers stopped; the script ran {time.monotonic() - script_started:.2f} s")

    assert status in (504, None), outcome  # a 504 from B, or A's own DeadlineExceeded
    assert elapsed < 1.3, elapsed
    assert 0 < seen_b["adopted"] < BUDGET
    assert 0 < seen_c["adopted"] < seen_b["adopted"]
    assert seen_c["status"] == 504
    assert seen_c["worked"] < 1.1, seen_c["worked"]  # C stopped early: not its 5 s


if __name__ == "__main__":
    main()
