"""A real ``ktg serve`` (uvicorn on loopback, a real PostgreSQL) answering a hostile tenant:
oversized headers, worst-case bodies while ``/healthz`` keeps answering, paths outside
what the tenant may read, and no answer that shows a server path or a traceback.

Ray is configured at a closed port, so the server starts no Ray head and launching
answers 503: everything here is decided before a job would start.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api_server import Server, serving
from tests.postgres import postgres_url  # noqa: F401
from tests.waiting import free_port

ALICE = {"Authorization": "Bearer alice-token-3c9d1e"}


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    root = tmp_path_factory.mktemp("serve-security")
    datasets = root / "datasets"
    for folder in ("shared/cifar", "tenants/alice/imgs", "tenants/bob/secret"):
        (datasets / folder).mkdir(parents=True)
    (datasets / "shared" / "out").symlink_to(root)
    with serving(root, KTG_STORAGE=postgres_url, KTG_DATASETS_DIR=str(datasets),
                 KTG_API_TOKENS=f"alice:{ALICE['Authorization'][7:]},bob:bob-token-77aa01",
                 RAY_ADDRESS=f"http://127.0.0.1:{free_port()}") as srv:
        yield srv


def test_oversized_headers_are_refused(server: Server) -> None:
    r = httpx.get(f"{server.url}/healthz", headers={"X-Pad": "a" * 20_000}, timeout=30)
    assert r.status_code == 431 and "request headers too large" in r.json()["detail"]
    # Far past the parser's limit the server stops reading: never the 200 a parser without a limit gives.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        answer = b""
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for _ in range(1024):
                s.sendall(b"X-Pad: " + b"a" * 1017 + b"\r\n")  # 1 MiB of headers in all
            s.sendall(b"\r\n")
            answer = s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection while the head was still arriving
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200


def worst_case_bodies() -> list[bytes]:
    """Bodies near the 64 KiB limit that cost the most to read and validate."""
    ranges = ",".join(["0-999999"] * 1111)  # ~10,000 characters: the longest class selection allowed
    models = ["wrn999994-999999"] * 2500  # valid names, each counted against the quota
    return [
        json.dumps({"name": "w1", "nodes": 2, "trials": 1, "dataset": "imagefolder", "classes": ranges,
                    "models": models, "data_dir": "shared/cifar"}).encode(),
        json.dumps({"name": "w2", "nodes": 2, "trials": 1, "classes": ",".join(["0-1000000"] * 6000)}).encode(),
        ("[" * 30_000 + "]" * 30_000).encode(),
        b'{"name": "w3", ' + b", ".join(b'"nodes": %d' % i for i in range(4000)) + b"}",
    ]


def test_worst_case_bodies_leave_healthz_answering(server: Server) -> None:
    bodies = worst_case_bodies()
    assert all(len(b) <= 64 * 1024 for b in bodies)
    statuses: list[int] = []
    health: list[int] = []

    def hammer() -> None:
        with server.client(ALICE) as c:
            for _ in range(10):
                for body in bodies:
                    statuses.append(c.post("/v1/studies", content=body,
                                           headers={"content-type": "application/json"}).status_code)

    senders = [threading.Thread(target=hammer) for _ in range(3)]
    for t in senders:
        t.start()
    with httpx.Client(base_url=server.url, timeout=30) as probe:
        while any(t.is_alive() for t in senders):
            health.append(probe.get("/healthz").status_code)
    for t in senders:
        t.join()
    assert statuses == [422] * (3 * 10 * len(bodies))
    assert health and set(health) == {200}


def test_paths_out_get_one_answer_and_no_answer_shows_the_server(server: Server) -> None:
    datasets = Path(server.env["KTG_DATASETS_DIR"])
    alice = server.client(ALICE)

    def post(**fields: object) -> httpx.Response:
        return alice.post("/v1/studies", json={"name": "p", "nodes": 2, "trials": 1, "dataset": "imagefolder",
                                               **fields})

    refused = [post(data_dir=path) for path in ("/root/.ray", "/root/.nope", "/etc", str(datasets / "shared"),
                                                  "../serve-security", "shared/out", "shared/out/data",
                                                  "tenants/bob/secret", "tenants/bob/nope", "x" * 300)]
    assert {r.status_code for r in refused} == {422}
    assert len({json.dumps(r.json()) for r in refused}) == 1
    assert refused[0].json()["errors"][0]["field"] == "data_dir"
    answers = [*refused,
               post(data_dir="shared/cifar"),  # allowed: 503, launching with no Ray here
               post(data_dir="tenants/alice/imgs", unknown=1),
               alice.get("/v1/studies/00000000-0000-0000-0000-000000000000"),
               alice.post("/v1/studies", content=b"\xff\xfe", headers={"content-type": "application/json"}),
               httpx.get(f"{server.url}/readyz"),
               httpx.get(f"{server.url}/v1/studies", headers={"Authorization": "Bearer nope"})]
    assert answers[len(refused)].status_code == 503
    for r in answers:
        for secret in (str(server.data_dir), str(datasets), "Traceback"):
            assert secret not in r.text, (r.request.url, r.text)
