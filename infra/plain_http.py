"""No CA bundle for a service reached over plain HTTP.

Every Prefect API client (``PrefectClient``, ``SyncPrefectClient``) and every Tiled client builds
a verified SSL context from certifi's bundle when it is made, whatever the address's scheme:
about 140 certificates parsed, 40 ms on an idle core here and 60-200 ms with a scan running.
Between the run-start event and the live flow's first view, the worker makes two Prefect
clients, the flow-run process four and its catalog client two, all for local ``http://``
services whose connections never use TLS. (Prefect's websocket client already makes no context
for ``ws://``; Prefect's open pull request #19106 would let callers share one.)

For an ``http://`` address the clients get ``ssl_context_for``'s context instead: it trusts no
certificate at all, costs nothing to make, and should such a client ever reach a TLS server it
fails verification instead of trusting anything. Clients of ``https://`` addresses, and clients
given their own ``verify`` context, are made exactly as the libraries make them.
"""

from __future__ import annotations

import functools
import ssl


def ssl_context_for(url: str) -> ssl.SSLContext | None:
    """For an ``http://`` URL a client context that verifies against no CA at all; for any
    other, None: let the library build its verified one."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT) if url.startswith("http://") else None


def skip_ca_bundle_in_prefect_clients() -> None:
    """Give Prefect API clients of an ``http://`` API ``ssl_context_for``'s context. The worker
    (infra/worker_server.py) and the flow-run fork server (infra/zygote.py, whose children
    inherit it) call this."""
    from prefect.client import orchestration

    for cls in (orchestration.PrefectClient, orchestration.SyncPrefectClient):
        if not getattr(cls.__init__, "tomopipe_plain_http", False):
            cls.__init__ = _plain_http_init(cls.__init__)


def _plain_http_init(init):
    @functools.wraps(init)
    def plain_http_init(self, api, *args, httpx_settings=None, **kwargs):
        context = ssl_context_for(api) if isinstance(api, str) else None
        if context is not None and \
                not isinstance((httpx_settings or {}).get("verify"), ssl.SSLContext):
            httpx_settings = {**(httpx_settings or {}), "verify": context}
        init(self, api, *args, httpx_settings=httpx_settings, **kwargs)

    plain_http_init.tomopipe_plain_http = True
    return plain_http_init
