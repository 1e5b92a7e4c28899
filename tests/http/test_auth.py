"""Token auth as an operator and a client meet it: `pacs-node token create` prints a token
once, the index keeps only its hash, each role reaches what it may and gets 401/403
otherwise, and a revoked token stops working."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from typer.testing import CliRunner

from pacs_node.cli import app
from tests.dimse.dimse_helpers import make_instance, part10

from .conftest import Web, create, uid
from .test_stow import multipart

STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=pacsnodeboundary'


def get(web: Web, path: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{web.url}{path}", headers=headers, timeout=30)


def stow(web: Web, token: str | None, n: int) -> requests.Response:
    headers = {"Content-Type": STOW_TYPE}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{web.url}/dicomweb/studies", headers=headers, timeout=30,
                         data=multipart([part10(make_instance(2, 1, n))]))


def test_each_role_reaches_what_it_may(secured: tuple[Web, Path]) -> None:
    web, config = secured
    reader, writer, admin = (create(config, name, role) for name, role in
                             (("ohif", "reader"), ("gateway", "writer"), ("ops", "admin")))
    study = f"/dicomweb/studies/{uid(1)}"
    for path in ("/dicomweb/studies", f"{study}/metadata", f"{study}/series"):
        assert get(web, path, reader).status_code == 200, path
        assert get(web, path, admin).status_code == 200, path
        assert get(web, path, writer).status_code == 403, path
    assert stow(web, writer, 1).status_code == 200
    assert stow(web, admin, 2).status_code == 200
    forbidden = stow(web, reader, 3)
    assert forbidden.status_code == 403 and "reader" in forbidden.json()["detail"]
    # A real client with its token in a header.
    client = DICOMwebClient(url=f"{web.url}/dicomweb",
                            headers={"Authorization": f"Bearer {reader}"})
    assert {s["0020000D"]["Value"][0] for s in client.search_for_studies()} == \
        {uid(1), uid(2)}


@pytest.mark.parametrize("authorization", [None, "Bearer", "Basic dXNlcjpwYXNz",
                                           "Bearer pacsnode_not-a-token", "Bearer x" * 50])
def test_no_valid_token_is_a_401_with_a_bearer_challenge(
        secured: tuple[Web, Path], authorization: str | None) -> None:
    web, _ = secured
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in (("GET", "/dicomweb/studies"), ("GET", f"/dicomweb/studies/{uid(1)}"),
                         ("POST", "/dicomweb/studies")):
        response = requests.request(method, f"{web.url}{path}", headers=headers, timeout=30)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="pacs-node"')
    assert get(web, "/api/openapi.json").status_code == 200  # the API's description is public


def test_a_revoked_token_stops_working_and_no_token_is_stored_in_clear(
        secured: tuple[Web, Path]) -> None:
    web, config = secured
    token = create(config, "temp", "reader")
    assert get(web, "/dicomweb/studies", token).status_code == 200
    assert token.encode() not in (web.folder / "index.db").read_bytes()
    listed = CliRunner().invoke(app, ["token", "list", "--config", str(config)])
    assert listed.exit_code == 0 and "temp" in listed.stdout and "reader" in listed.stdout
    assert token not in listed.stdout
    revoked = CliRunner().invoke(app, ["token", "revoke", "temp", "--config", str(config)])
    assert revoked.exit_code == 0, revoked.output
    response = get(web, "/dicomweb/studies", token)
    assert response.status_code == 401 and 'error="invalid_token"' in \
        response.headers["WWW-Authenticate"]


def test_token_names_and_roles_are_checked(secured: tuple[Web, Path]) -> None:
    _, config = secured
    create(config, "ohif", "reader")
    for args, words in ((["--name", "ohif", "--role", "reader"], "exists"),
                        (["--name", "x", "--role", "root"], "--role"),
                        (["--name", "../etc", "--role", "reader"], "token name")):
        out = CliRunner().invoke(app, ["token", "create", *args, "--config", str(config)])
        assert out.exit_code != 0 and words in out.output, out.output
    out = CliRunner().invoke(app, ["token", "revoke", "nobody", "--config", str(config)])
    assert out.exit_code != 0 and "no token named" in out.output


def test_without_auth_everything_is_open_on_loopback(make_web: Callable[..., Web]) -> None:
    web = make_web()
    assert get(web, "/dicomweb/studies").status_code == 200
