"""Put the pipeline under httpx clients: wrap(), Client(), AsyncClient()."""

from __future__ import annotations

from typing import Any, TypeVar, overload

import httpx

from ._errors import ConfigError
from ._mesh import Mesh
from ._pipeline import AsyncTransport, Transport, _resolve
from ._policy import STANDARD, Policy

__all__ = ["AsyncClient", "Client", "wrap"]

C = TypeVar("C", httpx.Client, httpx.AsyncClient)


@overload
def wrap(client: httpx.Client, policy_or_mesh: Policy | Mesh = ...) -> httpx.Client: ...
@overload
def wrap(client: httpx.AsyncClient, policy_or_mesh: Policy | Mesh = ...) -> httpx.AsyncClient: ...
def wrap(client: C, policy_or_mesh: Policy | Mesh = STANDARD) -> C:
    """Wrap every transport `client` uses (its default one and its mounts) and return it.

    The same client object comes back, with its limits, TLS settings and
    other options untouched.

    Args:
        client: an ``httpx.Client`` or ``httpx.AsyncClient``.
        policy_or_mesh: a `Policy` (its state lives in the process-wide default
            Mesh) or a `Mesh`.

    Raises:
        ConfigError: the client is already wrapped (stacked retries multiply
            load), or the arguments have the wrong type.
    """
    _resolve(policy_or_mesh)  # validate before touching the client
    if isinstance(client, httpx.Client):
        sync_transports = [client._transport, *client._mounts.values()]
        if any(isinstance(t, Transport) for t in sync_transports):
            raise ConfigError("wrap: this client is already wrapped by meshlib")
        client._transport = Transport(client._transport, policy_or_mesh)
        client._mounts = {
            pattern: None if t is None else Transport(t, policy_or_mesh)
            for pattern, t in client._mounts.items()
        }
    elif isinstance(client, httpx.AsyncClient):
        async_transports = [client._transport, *client._mounts.values()]
        if any(isinstance(t, AsyncTransport) for t in async_transports):
            raise ConfigError("wrap: this client is already wrapped by meshlib")
        client._transport = AsyncTransport(client._transport, policy_or_mesh)
        client._mounts = {
            pattern: None if t is None else AsyncTransport(t, policy_or_mesh)
            for pattern, t in client._mounts.items()
        }
    else:
        raise ConfigError(
            f"wrap: expected an httpx.Client or httpx.AsyncClient, got {type(client).__name__}"
        )
    return client


def Client(policy: Policy | Mesh = STANDARD, **kwargs: Any) -> httpx.Client:
    """Build an ``httpx.Client`` whose transports run `policy`'s layers.

    Args:
        policy: a `Policy` or a `Mesh`.
        **kwargs: passed to ``httpx.Client`` unchanged (base_url, limits, http2, ...).
    """
    return wrap(httpx.Client(**kwargs), policy)


def AsyncClient(policy: Policy | Mesh = STANDARD, **kwargs: Any) -> httpx.AsyncClient:
    """Build an ``httpx.AsyncClient`` whose transports run `policy`'s layers.

    Args:
        policy: a `Policy` or a `Mesh`.
        **kwargs: passed to ``httpx.AsyncClient`` unchanged.
    """
    return wrap(httpx.AsyncClient(**kwargs), policy)
