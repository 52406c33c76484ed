"""A tenant reads only its data, and no data file runs code (docs/security.md).

Confinement of ``data_dir`` on a real folder tree (files, symlinks, another
tenant's folder), then through the app on a real PostgreSQL (Ray at a closed
port: a spec that passes every check gets as far as launching, 503). The
crafted pickles are real pickles whose ``__reduce__`` would create a marker file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.confine import Unconfined, confine, confine_data_dir
from api.db import StudyRow
from api.lifecycle import new_row
from api.settings import Settings
from ktg.checkpoints import load_checkpoint
from ktg.data import load_dataset
from ktg.data.safe_pickle import load_plain
from ktg.errors import KtgError
from search.spec import SearchSpec
from tests.api_fixtures import ALICE, BOB, TOKENS, app_fixture, client_fixture, closed_port  # noqa: F401
from tests.postgres import postgres_url  # noqa: F401


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/datasets: shared/cifar, tenants/alice/imgs, tenants/bob/secret, and links in and out."""
    base = tmp_path_factory.mktemp("confine")
    root = base / "datasets"
    for folder in ("shared/cifar", "tenants/alice/imgs", "tenants/bob/secret"):
        (root / folder).mkdir(parents=True)
    (base / "outside").mkdir()
    (root / "shared" / "out").symlink_to(base / "outside")            # a link leading out of the folder
    (root / "shared" / "to-bob").symlink_to(root / "tenants" / "bob")  # a shared link into bob's folder
    (root / "tenants" / "alice" / "cifar").symlink_to(root / "shared" / "cifar")  # alice's link to shared data
    (root / "tenants" / "alice" / "loop").symlink_to(root / "tenants" / "alice" / "loop")
    return root


ALLOWED = {  # path -> where it resolves, relative to the datasets folder
    "shared/cifar": "shared/cifar",
    "./shared//cifar/": "shared/cifar",
    "shared/not-there-yet": "shared/not-there-yet",
    "tenants/alice/imgs": "tenants/alice/imgs",
    "tenants/alice/not-there": "tenants/alice/not-there",
    "tenants/alice/cifar": "shared/cifar",
}
REFUSED = ["/etc", "/nonexistent/x", "../outside", "shared/../shared/cifar", "shared/out", "shared/out/x",
           "shared/to-bob/secret", "tenants/bob/secret", "tenants/bob/not-there", "tenants", "Tenants/bob/secret",
           "tenants/alice/loop", "", "x" * 2000, "a/" + "b" * 300, "nul\0byte"]


@pytest.mark.parametrize(("path", "real"), ALLOWED.items())
def test_allowed_paths_resolve_inside(datasets: Path, path: str, real: str) -> None:
    assert confine(datasets, "alice", path, "data_dir") == datasets / real


@pytest.mark.parametrize("path", REFUSED)
def test_refused_paths_get_one_answer_whatever_exists(datasets: Path, path: str) -> None:
    with pytest.raises(Unconfined) as err:
        confine(datasets, "alice", path, "data_dir")
    with pytest.raises(Unconfined) as reference:  # a path that certainly does not exist
        confine(datasets, "alice", "/no/such/path", "data_dir")
    assert str(err.value) == str(reference.value) and str(err.value).startswith("data_dir: ")
    assert str(datasets) not in str(err.value)


def test_bob_reads_his_folder_but_not_alices(datasets: Path) -> None:
    assert confine(datasets, "bob", "tenants/bob/secret", "data_dir") == datasets / "tenants/bob/secret"
    with pytest.raises(Unconfined):
        confine(datasets, "bob", "tenants/alice/imgs", "data_dir")


def test_without_a_datasets_folder_only_folderless_datasets(datasets: Path) -> None:
    with pytest.raises(Unconfined, match=r"^data_dir: this service has no datasets folder.*digits, synthetic, "
                                         r"fashionmnist"):
        confine(None, "alice", "shared/cifar", "data_dir")
    assert confine_data_dir(None, "alice", "digits", None) is None
    assert confine_data_dir(None, "alice", "fashionmnist", None) is None  # Debian's package folder
    with pytest.raises(Unconfined, match=r"^data_dir: cifar10 reads its files from a folder"):
        confine_data_dir(None, "alice", "cifar10", None)
    with pytest.raises(Unconfined, match=r"^data_dir: imagefolder reads its files from a folder"):
        confine_data_dir(datasets, "alice", "imagefolder", None)


# -- through the app ---------------------------------------------------------------------------


@pytest.fixture(scope="module", name="app_settings")
def app_settings_fixture(postgres_url: str, datasets: Path) -> Settings:  # noqa: F811
    return Settings(storage=postgres_url, tokens=TOKENS, data_dir=datasets.parent / "data",
                    ray_address=f"http://127.0.0.1:{closed_port()}", ray_timeout_s=2.0, reconcile_interval_s=0,
                    datasets_dir=datasets)


def post(client: TestClient, name: str, **fields: Any) -> Any:
    return client.post("/v1/studies", json={"name": name, "nodes": 2, "trials": 1, "dataset": "imagefolder",
                                            **fields}, headers=ALICE)


def test_over_http_every_refused_path_is_the_same_422_and_nothing_is_recorded(client: TestClient, app: FastAPI,
                                                                              datasets: Path) -> None:
    answers = {path: post(client, f"refused-{i}", data_dir=path) for i, path in enumerate(REFUSED)}
    first = next(iter(answers.values()))
    for path, r in answers.items():
        assert r.status_code == 422, (path, r.text)
        assert r.json()["errors"] == first.json()["errors"] and r.json()["errors"][0]["field"] == "data_dir", path
        assert str(datasets) not in r.text and "Traceback" not in r.text
    with app.state.sessions() as session:
        assert not session.scalars(select(StudyRow).where(StudyRow.name.like("refused-%"))).all()


def test_over_http_allowed_paths_get_as_far_as_launching(client: TestClient) -> None:
    for i, path in enumerate(ALLOWED):
        r = post(client, f"allowed-{i}", data_dir=path)
        assert r.status_code == 503 and "Ray" in r.json()["detail"], (path, r.text)  # launching: no Ray here


def test_the_job_gets_the_resolved_folder_and_the_tenant_sees_its_own_words(app: FastAPI, datasets: Path) -> None:
    """The lifecycle resolves again at launch: the row keeps 'tenants/alice/cifar', the job reads the real folder."""
    row = new_row("alice", SearchSpec(name="words", nodes=2, trials=1, dataset="cifar10",
                                      data_dir="tenants/alice/cifar"), datasets.parent / "studies")
    assert row.spec["data_dir"] == "tenants/alice/cifar"
    lifecycle = app.state.lifecycle
    assert lifecycle.data_path("alice", row.spec["data_dir"]) == datasets / "shared" / "cifar"
    with pytest.raises(Unconfined):
        lifecycle.data_path("bob", row.spec["data_dir"])


# -- no code from data ----------------------------------------------------------------------------


class MarkerPayload:
    """Unpickling this calls os.system: a marker file appears if the unpickler lets it run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_a_crafted_cifar_batch_runs_nothing(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good, protocol=protocol))
    (folder / "data_batch_1").write_bytes(pickle.dumps({**good, b"labels": MarkerPayload(marker)}, protocol=protocol))
    with pytest.raises(KtgError) as err:
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    assert "refused" in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("cifar10: ")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_pickles_of_every_protocol_read_back(tmp_path: Path, protocol: int) -> None:
    batch = {"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), "labels": [3, 4], b"key": b"\x00\xff",
             "label": np.int64(7), "mixed": [1.5, None, True, ("a", 2)]}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    read = load_plain(path, "cifar10")
    np.testing.assert_array_equal(read["data"], batch["data"])
    assert read["labels"] == [3, 4] and read[b"key"] == b"\x00\xff" and read["label"] == 7
    assert read["mixed"] == [1.5, None, True, ("a", 2)]


def test_calling_ndarray_directly_is_refused(tmp_path: Path) -> None:
    """numpy.ndarray may only reach _reconstruct: called directly it would allocate any shape."""

    class Huge:
        def __reduce__(self) -> tuple[Any, ...]:
            return (np.ndarray, ((1 << 40,),))

    path = tmp_path / "huge"
    path.write_bytes(pickle.dumps(Huge(), protocol=2))
    with pytest.raises(KtgError, match=r"^cifar10: cannot read .*not a pickle of plain data"):
        load_plain(path, "cifar10")


def test_a_crafted_checkpoint_runs_nothing(tmp_path: Path) -> None:
    """torch.load of a user-named file loads weights only: the same payload inside a .pt file."""
    marker = tmp_path / "marker"
    path = tmp_path / "node1.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "evil": MarkerPayload(marker)}, path)
    with pytest.raises(KtgError, match=r"^checkpoint: cannot read .*node1\.pt"):
        load_checkpoint(str(path))
    assert not marker.exists()


@pytest.fixture(autouse=True)
def _no_marker_left(tmp_path: Path) -> Iterator[None]:
    yield
    assert not (tmp_path / "marker").exists()
