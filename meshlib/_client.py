"""Put the pipeline under httpx clients: wrap(), Client(), AsyncClient()."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload

import httpx

from ._compat import client_transports, set_client_transports
from ._errors import ConfigError
from ._mesh import Mesh
from ._pipeline import AsyncTransport, Transport, _resolve
from ._policy import Policy
from ._tls import TLS

__all__ = ["AsyncClient", "Client", "wrap"]

C = TypeVar("C", httpx.Client, httpx.AsyncClient)


@overload
def wrap(client: httpx.Client, policy_or_mesh: Policy | Mesh | None = ...) -> httpx.Client: ...
@overload
def wrap(
    client: httpx.AsyncClient, policy_or_mesh: Policy | Mesh | None = ...
) -> httpx.AsyncClient: ...
def wrap(client: C, policy_or_mesh: Policy | Mesh | None = None) -> C:
    """Wrap every transport `client` uses (its default one and its mounts) and return it.

    The same client object comes back, with its limits, TLS settings and
    other options untouched.

    Args:
        client: an ``httpx.Client`` or ``httpx.AsyncClient``.
        policy_or_mesh: a `Mesh`; or a `Policy`, which wins over any Mesh's
            policies for this client while its state (breakers, budgets) lives in
            the process-wide default Mesh; or None (the default): the default
            Mesh's own policies, those of the file ``$MESHLIB_CONFIG`` names
            (followed for changes), else STANDARD.

    Raises:
        ConfigError: the client is already wrapped (stacked retries multiply
            load), the arguments have the wrong type, or the file
            ``$MESHLIB_CONFIG`` names is missing or invalid.
    """
    _resolve(policy_or_mesh)  # validate before touching the client
    wrapper: Any  # Transport or AsyncTransport: the same steps for either kind of client
    if isinstance(client, httpx.Client):
        wrapper = Transport
    elif isinstance(client, httpx.AsyncClient):
        wrapper = AsyncTransport
    else:
        raise ConfigError(
            f"wrap: expected an httpx.Client or httpx.AsyncClient, got {type(client).__name__}"
        )
    inner: Any
    mounted: Mapping[Any, Any]
    inner, mounted = client_transports(client)
    if any(isinstance(t, wrapper) for t in [inner, *mounted.values()]):
        raise ConfigError("wrap: this client is already wrapped by meshlib")
    set_client_transports(
        client,
        wrapper(inner, policy_or_mesh),
        {
            pattern: None if t is None else wrapper(t, policy_or_mesh)
            for pattern, t in mounted.items()
        },
    )
    return client


def _with_tls(owner: str, tls: TLS | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return httpx's keyword arguments with `tls`'s context as ``verify``."""
    if tls is None:
        return kwargs
    if not isinstance(tls, TLS):
        raise ConfigError(f"{owner}.tls: expected a meshlib.TLS or None, got {type(tls).__name__}")
    for name in ("verify", "cert"):
        if name in kwargs:
            raise ConfigError(
                f"{owner}.tls: expected either tls= or {name}=, got both (tls carries "
                "the client certificate and the CAs to trust)"
            )
    if "transport" in kwargs:
        # httpx ignores verify= when given a transport: tls= would silently not apply.
        raise ConfigError(
            f"{owner}.tls: expected either tls= or transport=, got both (build the "
            "transport with verify=tls.ssl_context() instead)"
        )
    return {**kwargs, "verify": tls.ssl_context()}


def Client(
    policy: Policy | Mesh | None = None, *, tls: TLS | None = None, **kwargs: Any
) -> httpx.Client:
    """Build an ``httpx.Client`` whose transports run `policy`'s layers.

    Args:
        policy: a `Policy` or a `Mesh`, or None, as for `wrap`.
        tls: a `TLS` whose client certificate and trust the client uses (its
            ``ssl_context()`` becomes httpx's ``verify``).
        **kwargs: passed to ``httpx.Client`` unchanged (base_url, limits, http2, ...).

    Raises:
        ConfigError: `tls` is given with ``verify=``, ``cert=`` or ``transport=``.
    """
    return wrap(httpx.Client(**_with_tls("Client", tls, kwargs)), policy)


def AsyncClient(
    policy: Policy | Mesh | None = None, *, tls: TLS | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """Build an ``httpx.AsyncClient`` whose transports run `policy`'s layers.

    Args:
        policy: a `Policy` or a `Mesh`.
        tls: a `TLS`, as for `Client`.
        **kwargs: passed to ``httpx.AsyncClient`` unchanged.

    Raises:
        ConfigError: `tls` is given with ``verify=``, ``cert=`` or ``transport=``.
    """
    return wrap(httpx.AsyncClient(**_with_tls("AsyncClient", tls, kwargs)), policy)
