"""Clients of a service on plain HTTP make no CA bundle (infra/plain_http.py), and the
embedded Prefect server's in-process clients reuse its application (infra/prefect_server.py):
both were on the path from the run-start event to the live flow running.

Real Prefect clients and a real Prefect application are made here; ``ssl.create_default_context``
and Prefect's ``create_app`` are only counted. Requests through patched clients to a real
server are made by every services test (the worker and flow-run processes run with the patch).
"""

from __future__ import annotations

import ssl

import pytest
from tomopipe.infra import plain_http, prefect_server


@pytest.fixture
def contexts_made(monkeypatch):
    """Counts the verified contexts made from a CA bundle (``ssl.create_default_context``)."""
    made = []
    original = ssl.create_default_context

    def counting(*args, **kwargs):
        made.append(kwargs.get("cafile"))
        return original(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    return made


@pytest.fixture
def patched_clients(monkeypatch):
    from prefect.client import orchestration

    for cls in (orchestration.PrefectClient, orchestration.SyncPrefectClient):
        monkeypatch.setattr(cls, "__init__", cls.__init__)  # restored after the test
    plain_http.skip_ca_bundle_in_prefect_clients()
    plain_http.skip_ca_bundle_in_prefect_clients()  # twice is once
    return orchestration


def test_the_context_for_plain_http_trusts_nothing():
    ctx = plain_http.ssl_context_for("http://127.0.0.1:4200/api")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.get_ca_certs() == [] and ctx.cert_store_stats()["x509_ca"] == 0
    assert plain_http.ssl_context_for("https://prefect.example.org/api") is None


@pytest.mark.parametrize("cls_name", ["PrefectClient", "SyncPrefectClient"])
def test_prefect_clients_of_plain_http_make_no_ca_bundle(patched_clients, contexts_made,
                                                         cls_name):
    cls = getattr(patched_clients, cls_name)
    assert cls.__init__.tomopipe_plain_http
    cls("http://127.0.0.1:9/api")
    assert contexts_made == []
    cls("https://prefect.example.org/api")  # TLS: verified against certifi's bundle as before
    assert len(contexts_made) == 1 and contexts_made[0]
    own = ssl.create_default_context()
    contexts_made.clear()
    cls("http://127.0.0.1:9/api", httpx_settings={"verify": own})  # a caller's own: kept
    assert contexts_made == []


def test_in_process_clients_reuse_the_server_app(monkeypatch):
    import prefect.settings
    from prefect.server.api import server
    from prefect.server.api.clients import OrchestrationClient

    calls = []
    original = server.create_app

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(server, "create_app", counting)  # restored after the test
    prefect_server.reuse_current_app()
    prefect_server.reuse_current_app()  # twice is once
    first = server.create_app()
    OrchestrationClient()
    OrchestrationClient()
    assert server.create_app() is first and len(calls) == 1
    with prefect.settings.temporary_settings(
            updates={prefect.settings.PREFECT_API_DEFAULT_LIMIT: 123}):
        other = server.create_app()  # other settings: Prefect's own cache decides
    assert len(calls) == 2
    assert other is not first
    assert server.create_app() is first and len(calls) == 2
    server.create_app(ignore_cache=True)  # goes to Prefect as before
    assert len(calls) == 3
