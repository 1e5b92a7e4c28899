"""A browser signs in with a token when http.auth is on: the viewer page sends it to
/login, the token becomes an HttpOnly cookie, and that cookie opens reading only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from typer.testing import CliRunner

from pacs_node.cli import app
from tests.dimse.dimse_helpers import make_instance, part10

from .conftest import Web, create, uid
from .test_auth import STOW_TYPE
from .test_stow import multipart
from .test_viewer import require_viewer

STUDY_PAGE = f"/viewer/viewer?StudyInstanceUIDs={uid(1)}"


def sign_in(web: Web, token: str, next_path: str = STUDY_PAGE) -> requests.Response:
    return requests.post(f"{web.url}/api/v1/session", data={"token": token, "next": next_path},
                         allow_redirects=False, timeout=30)


def test_the_viewer_page_sends_a_browser_to_sign_in_and_back(
        secured: tuple[Web, Path]) -> None:
    require_viewer()
    web, config = secured
    page = requests.get(web.url + STUDY_PAGE, allow_redirects=False, timeout=30)
    assert page.status_code == 303
    login = page.headers["location"]
    assert parse_qs(urlsplit(login).query)["next"] == [STUDY_PAGE]
    form = requests.get(web.url + login, timeout=30)
    assert form.status_code == 200 and 'name="token"' in form.text
    assert f'value="{STUDY_PAGE}"'.replace("&", "&amp;") in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]

    answer = sign_in(web, create(config, "ohif", "reader"))
    assert answer.status_code == 303 and answer.headers["location"] == STUDY_PAGE
    cookie = answer.headers["set-cookie"]
    assert "pacsnode_session=pacsnode_" in cookie
    for attribute in ("HttpOnly", "SameSite=lax", "Path=/", "Max-Age=43200"):
        assert attribute.lower() in cookie.lower(), attribute
    assert "secure" not in cookie.lower()  # plain HTTP on loopback: a Secure cookie is lost

    browser = requests.Session()
    browser.cookies.update(answer.cookies)
    assert browser.get(web.url + STUDY_PAGE, timeout=30).text.startswith("<!")  # OHIF's page
    studies = browser.get(f"{web.url}/dicomweb/studies", timeout=30)
    assert studies.status_code == 200 and len(studies.json()) == 1

    out = browser.post(f"{web.url}/api/v1/session/logout", allow_redirects=False, timeout=30)
    assert out.status_code == 303 and 'pacsnode_session=""' in out.headers["set-cookie"]
    assert browser.get(f"{web.url}/dicomweb/studies", timeout=30).status_code == 401


def test_a_bad_token_is_refused_with_the_form_again(secured: tuple[Web, Path]) -> None:
    web, _ = secured
    for token in ("pacsnode_not-a-token", "x" * 300, ""):
        answer = sign_in(web, token)
        assert answer.status_code in (401, 422), token[:20]
        assert "set-cookie" not in answer.headers
    answer = sign_in(web, "pacsnode_not-a-token")
    assert answer.status_code == 401
    assert "not valid" in answer.text and 'name="token"' in answer.text


def test_the_cookie_opens_reading_only(secured: tuple[Web, Path]) -> None:
    """A page on another site can make a signed-in browser post to the node: the cookie
    alone never stores anything, whatever the token's role."""
    web, config = secured
    cookies = sign_in(web, create(config, "desk", "admin")).cookies
    stored = requests.post(f"{web.url}/dicomweb/studies", cookies=cookies, timeout=30,
                           headers={"Content-Type": STOW_TYPE},
                           data=multipart([part10(make_instance(2, 1, 1))]))
    assert stored.status_code == 401
    assert requests.get(f"{web.url}/dicomweb/studies/{uid(2)}/metadata", cookies=cookies,
                        timeout=30).status_code == 404  # nothing of it was stored


def test_a_revoked_token_signs_the_browser_out(secured: tuple[Web, Path]) -> None:
    require_viewer()
    web, config = secured
    cookies = sign_in(web, create(config, "ohif", "reader")).cookies
    assert requests.get(f"{web.url}/dicomweb/studies", cookies=cookies,
                        timeout=30).status_code == 200
    out = CliRunner().invoke(app, ["token", "revoke", "ohif", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert requests.get(f"{web.url}/dicomweb/studies", cookies=cookies,
                        timeout=30).status_code == 401
    page = requests.get(web.url + STUDY_PAGE, cookies=cookies, allow_redirects=False, timeout=30)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?")


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "\\\\evil",
                                    "/\\evil.example", "javascript:alert(1)", "/ok\r\nX: y"])
def test_sign_in_never_redirects_off_the_node(secured: tuple[Web, Path],
                                              target: str) -> None:
    web, config = secured
    token = create(config, "ohif", "reader")
    assert sign_in(web, token, target).headers["location"] == "/viewer/"


def test_without_auth_there_is_nothing_to_sign_in_to(make_web: Callable[..., Web]) -> None:
    require_viewer()
    web = make_web()
    page = requests.get(web.url + STUDY_PAGE, allow_redirects=False, timeout=30)
    assert page.status_code == 200
