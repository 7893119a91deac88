"""The sync and async transports: thin drivers over `_call.Call`.

The order of layers and every decision live in `_call.py` (its docstring
draws the order: route, deadline, faults, bulkhead, retry, and per attempt
breaker, endpoint, span, timeout, headers, then the inner transport, with
the response body read under the same deadline). `Transport.handle_request`
and `AsyncTransport.handle_async_request` are the same short loop, differing
only in how they call, read, wait and queue: each asks its `Call` what to do
next (SEND, WAIT, QUEUE, DRAIN, RETURN) and does it. Hedged copies are I/O
too, so they are sent here (threads for sync, a task group for async); the
call decides whether a copy may go (`may_hedge`) and where (`new_attempt`).
Keep the two drivers side by side and in step.

Over 400 lines only because the two drivers and their hedged sends sit side by
side, as they must to stay in step; each driver on its own is short.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import cast

import anyio
import httpx

from ._call import DRAIN, RAISE, RETURN, SEND, WAIT, Attempt, Call, is_failure
from ._compat import reclaim_orphaned_connections
from ._errors import ConfigError
from ._mesh import Mesh, default_mesh, refuse_destination_layers
from ._origin import Origins, async_transport, sync_transport
from ._policy import STANDARD, Policy
from ._runtime import runtime
from ._streams import close_shielded
from ._tls import TLS
from ._traffic import Endpoint

__all__ = ["AsyncTransport", "Transport"]

_LAYER_NAMES = [f.name for f in dataclasses.fields(Policy) if f.init]


def _resolve(policy_or_mesh: Policy | Mesh | None) -> tuple[Mesh, Policy | None]:
    if policy_or_mesh is None:  # the default Mesh's own policies ($MESHLIB_CONFIG's file)
        return default_mesh(), None
    if isinstance(policy_or_mesh, Mesh):
        return policy_or_mesh, None
    if isinstance(policy_or_mesh, Policy):
        # A bare policy applies to every destination: it is a default.
        refuse_destination_layers(policy_or_mesh, "policy")
        return default_mesh(), policy_or_mesh
    raise ConfigError(f"policy: expected a meshlib.Policy or meshlib.Mesh, got {policy_or_mesh!r}")


# Per kind of driver (async or not): the method httpx calls, what to give, the other driver.
_KINDS = {
    False: (
        "handle_request",
        "an httpx.BaseTransport such as httpx.HTTPTransport()",
        "meshlib.AsyncTransport",
    ),
    True: (
        "handle_async_request",
        "an httpx.AsyncBaseTransport such as httpx.AsyncHTTPTransport()",
        "meshlib.Transport",
    ),
}


def _refuse_inner(owner: str, transport: object, asynchronous: bool) -> None:
    """Raise ConfigError unless `transport` can be the inner transport of `owner`.

    Checked by the method httpx calls, as httpx itself duck-types transports; a
    meshlib transport inside another would multiply retries, as wrapping twice does.
    """
    if isinstance(transport, _Pipeline):
        raise ConfigError(
            f"{owner}.transport: expected the transport that does the I/O, got "
            f"{transport!r} (a meshlib transport inside another multiplies retries)"
        )
    method, kind, other = _KINDS[asynchronous]
    if not callable(getattr(transport, method, None)):
        opposite = _KINDS[not asynchronous][0]
        hint = f"; for it, use {other}" if callable(getattr(transport, opposite, None)) else ""
        raise ConfigError(f"{owner}.transport: expected {kind}, got {transport!r}{hint}")


def _layers_on(policy: Policy) -> str:
    on = [name for name in _LAYER_NAMES if getattr(policy, name) is not None]
    return f"with {', '.join(on)}" if on else "with every layer off"


def _inner_name(transport: object) -> str:
    kind = type(transport)
    return f"{kind.__module__}.{kind.__qualname__}"


class _Pipeline:
    """What both drivers share: the inner transport and where policies come from."""

    def __init__(self, policy_or_mesh: Policy | Mesh | None = None) -> None:
        self.mesh, self.policy = _resolve(policy_or_mesh)
        self.plans = self.mesh._plans

    def __repr__(self) -> str:
        inner = _inner_name(getattr(self, "inner", None))
        if self.policy is None:
            return f"<meshlib.{type(self).__name__} over {inner}, policies from {self.mesh!r}>"
        policy = "STANDARD" if self.policy == STANDARD else _layers_on(self.policy)
        return (
            f"<meshlib.{type(self).__name__} over {inner}, policy {policy}, state in {self.mesh!r}>"
        )


class Transport(_Pipeline, httpx.BaseTransport):
    """Wrap a sync httpx transport with a policy's layers.

    Args:
        transport: the transport that does the I/O, e.g. ``httpx.HTTPTransport()``.
        policy: a `Policy` (state kept in the process-wide default Mesh), a `Mesh`,
            or None for the default Mesh's own policies (as for `wrap`).

    Raises:
        ConfigError: `transport` is not a sync transport (None, an async one) or
            is already a meshlib transport, or `policy` is neither a Policy nor a Mesh.
    """

    def __init__(self, transport: httpx.BaseTransport, policy: Policy | Mesh | None = None) -> None:
        _refuse_inner("Transport", transport, asynchronous=False)
        super().__init__(policy)
        self.inner = transport
        self._origins: Origins[httpx.HTTPTransport] = Origins(sync_transport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        call = Call(self.plans, self.policy, request, False)
        try:
            action = call.start()
            while True:
                if action == SEND:
                    try:
                        if call.hedge is None:
                            if call.plan.tls is None:
                                response = self.inner.handle_request(request)
                            else:
                                response = self._over(call.plan.tls).handle_request(request)
                        else:
                            response = self._hedged(call, call.hedge)
                    except Exception as exc:  # cancellation and Ctrl-C are handled below
                        action = call.failed(exc)
                        if action == RAISE:
                            raise
                    except BaseException as exc:  # clean up, then re-raise: it propagates
                        call.cancelled(exc)
                        raise
                    else:
                        action = call.answered(response)
                        if action == RETURN:
                            return response  # call.response: the common case, at once
                elif action == RETURN:
                    assert call.response is not None
                    return call.response
                elif action == WAIT:
                    if call.wait > 0:
                        runtime.clock.sleep(call.wait)
                    action = call.waited()
                elif action == DRAIN:
                    last = call.response
                    assert last is not None
                    try:
                        last.read()
                    except httpx.TransportError:
                        pass
                    finally:
                        last.close()
                    action = call.drained()
                else:  # QUEUE
                    assert call.plan.bulkhead is not None
                    action = call.queued(call.plan.bulkhead.acquire(call.queue_for))
        except Exception as exc:  # the call finally failed: its fallback may answer
            if call.plan.fallback is None or (answer := call.fall_back(exc)) is None:
                raise
            return answer
        finally:
            # Cheaper than `with call`, which only a function's span needs.
            if call.slot is not None:
                call.slot.release()

    def _hedged(self, call: Call, delay: float) -> httpx.Response:
        """Send the request, and copies after `delay` without an answer; the first answer wins.

        Copies run in threads (a blocked sync read cannot be cancelled): the
        losers' responses are closed when they arrive. The winner's response
        carries the caller's request.
        """
        request = call.request
        assert request is not None
        answers: queue.SimpleQueue[httpx.Response | Exception] = queue.SimpleQueue()
        hedge = call.plan.policy.hedge
        assert hedge is not None
        inner = self.inner if call.plan.tls is None else self._over(call.plan.tls)

        def send(copy: httpx.Request, avoid: Endpoint | None) -> Endpoint | None:
            attempt = call.new_attempt(copy, avoid)

            def run() -> None:
                try:
                    response = inner.handle_request(copy)
                except Exception as exc:
                    attempt.end(exc, is_failure(exc))
                    answers.put(exc)
                    return
                attempt.end(response, response.status_code >= 500)
                answers.put(response)

            threading.Thread(target=run, name="meshlib-hedge", daemon=True).start()
            return attempt.endpoint

        # Every attempt sends a copy: a loser still running must not change the URL
        # of the request the caller gets back.
        used = send(copy_request(request), call.avoid)
        launched, failures, copies_allowed = 1, 0, True
        try:
            while True:
                may_copy = copies_allowed and launched <= hedge.max_extra
                try:
                    answer = answers.get(timeout=delay if may_copy else None)
                except queue.Empty:
                    if call.may_hedge():
                        used = send(copy_request(request), used)
                        launched += 1
                    else:
                        copies_allowed = False
                    continue
                if isinstance(answer, httpx.Response):
                    _close_the_rest(answers, launched - failures - 1)
                    answer.request = request
                    return answer
                failures += 1
                if failures == launched:
                    raise answer  # every copy failed: the retry layer decides what follows
        except BaseException:
            # Interrupted while waiting (Ctrl-C): the copies still running are closed
            # as they answer; then the interruption goes on.
            _close_the_rest(answers, launched - failures)
            raise

    def _over(self, tls: TLS) -> httpx.BaseTransport:
        """Return the inner transport that connects with `tls` (see `_origin`)."""
        inner, evicted = self._origins.get(tls)
        for old in evicted:
            old.close()
        return inner

    def close(self) -> None:
        for own in self._origins.close_all():
            own.close()
        self.inner.close()


class AsyncTransport(_Pipeline, httpx.AsyncBaseTransport):
    """Wrap an async httpx transport with a policy's layers.

    Args:
        transport: the transport that does the I/O, e.g. ``httpx.AsyncHTTPTransport()``.
        policy: a `Policy` (state kept in the process-wide default Mesh), a `Mesh`,
            or None for the default Mesh's own policies (as for `wrap`).

    Raises:
        ConfigError: `transport` is not an async transport (None, a sync one) or
            is already a meshlib transport, or `policy` is neither a Policy nor a Mesh.
    """

    def __init__(
        self, transport: httpx.AsyncBaseTransport, policy: Policy | Mesh | None = None
    ) -> None:
        _refuse_inner("AsyncTransport", transport, asynchronous=True)
        super().__init__(policy)
        self.inner = transport
        self._origins: Origins[httpx.AsyncHTTPTransport] = Origins(async_transport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        xds = self.mesh._xds  # a control plane: the first request to a destination waits
        if xds is not None:
            await xds.want_async(request.url)
        call = Call(self.plans, self.policy, request, True)
        try:
            action = call.start()
            while True:
                if action == SEND:
                    try:
                        if call.hedge is None:
                            if call.plan.tls is None:
                                response = await self.inner.handle_async_request(request)
                            else:
                                inner = await self._over(call.plan.tls)
                                response = await inner.handle_async_request(request)
                        else:
                            response = await self._hedged(call, call.hedge)
                    except Exception as exc:  # cancellation is handled below
                        action = call.failed(exc)
                        if action == RAISE:
                            raise
                    except BaseException as exc:  # clean up, then re-raise: it propagates
                        call.cancelled(exc)
                        await reclaim_orphaned_connections(self.inner)
                        raise
                    else:
                        action = call.answered(response)
                        if action == RETURN:
                            return response  # call.response: the common case, at once
                elif action == RETURN:
                    assert call.response is not None
                    return call.response
                elif action == WAIT:
                    if call.wait > 0:
                        await runtime.clock.asleep(call.wait)
                    action = call.waited()
                elif action == DRAIN:
                    last = call.response
                    assert last is not None
                    try:
                        await last.aread()
                    except httpx.TransportError:
                        pass
                    finally:
                        await last.aclose()
                    action = call.drained()
                else:  # QUEUE
                    assert call.plan.bulkhead is not None
                    action = call.queued(await call.plan.bulkhead.acquire_async(call.queue_for))
        except Exception as exc:  # the call finally failed: its fallback may answer
            if call.plan.fallback is None or (answer := call.fall_back(exc)) is None:
                raise
            return answer
        finally:
            # Cheaper than `with call`, which only a function's span needs.
            if call.slot is not None:
                call.slot.release()

    async def _hedged(self, call: Call, delay: float) -> httpx.Response:
        """Send the request, and copies after `delay` without an answer; the first answer wins.

        The losers are cancelled (their spans end, their endpoints are not
        blamed) and any response they already had is closed.
        """
        request = call.request
        assert request is not None
        hedge = call.plan.policy.hedge
        assert hedge is not None
        inner = self.inner if call.plan.tls is None else await self._over(call.plan.tls)
        answered = anyio.Event()
        winner: list[httpx.Response] = []
        errors: list[Exception] = []
        launched = 0

        async def send(attempt: Attempt) -> None:
            copy = attempt.request
            try:
                response = await inner.handle_async_request(copy)
            except Exception as exc:
                attempt.end(exc, is_failure(exc))
                errors.append(exc)
                if len(errors) == launched:
                    answered.set()
                return
            except BaseException as exc:  # a loser, cancelled: not the endpoint's fault
                attempt.end(exc, None)
                await reclaim_orphaned_connections(inner)
                raise
            attempt.end(response, response.status_code >= 500)
            if winner:
                # Its task group is being cancelled: the close must not stop halfway.
                await close_shielded(cast(httpx.AsyncByteStream, response.stream))
            else:
                winner.append(response)
                answered.set()

        async with anyio.create_task_group() as group:
            # Chosen here, not in the task, so each copy can avoid the last one's endpoint.
            attempt = call.new_attempt(copy_request(request), call.avoid)
            group.start_soon(send, attempt)
            launched = 1
            while launched <= hedge.max_extra:
                with anyio.move_on_after(delay):
                    await answered.wait()
                if answered.is_set() or not call.may_hedge():
                    break
                launched += 1
                attempt = call.new_attempt(copy_request(request), attempt.endpoint)
                group.start_soon(send, attempt)
            await answered.wait()
            group.cancel_scope.cancel()
        if winner:
            winner[0].request = request
            return winner[0]
        raise errors[-1]

    async def _over(self, tls: TLS) -> httpx.AsyncBaseTransport:
        """Return the inner transport that connects with `tls` (see `_origin`)."""
        inner, evicted = self._origins.get(tls)
        for old in evicted:
            await old.aclose()
        return inner

    async def aclose(self) -> None:
        for own in self._origins.close_all():
            await own.aclose()
        await self.inner.aclose()


def copy_request(request: httpx.Request) -> httpx.Request:
    """Return a copy of a replayable request for a hedged attempt."""
    copy = httpx.Request(
        request.method, request.url, headers=request.headers.copy(), content=request.read()
    )
    # One extensions dict for all copies: the timeouts httpcore reads from it are the
    # call's, and the bound the winner's body stream sets must reach the copy that won.
    copy.extensions = request.extensions
    return copy


def _close_the_rest(answers: queue.SimpleQueue[httpx.Response | Exception], pending: int) -> None:
    """Close the losing copies' responses as they arrive, off the caller's thread."""
    if pending <= 0:
        return

    def drain() -> None:
        for _ in range(pending):
            answer = answers.get()
            if isinstance(answer, httpx.Response):
                answer.close()

    threading.Thread(target=drain, name="meshlib-hedge-close", daemon=True).start()
