"""load_settings: a bad key is reported with where it came from, the file or the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pacs_node.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _no_node_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PACS_NODE__"):
            monkeypatch.delenv(name)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("node:\n  ae_title: PACSNODE\n  dimse_port: 11112\n")
    return path


def _error(config: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    return str(caught.value)


def test_typo_in_an_environment_key_names_the_variable_not_the_file(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_NODE__NODE__DIMSE_PROT", "11113")
    message = _error(config)
    assert "node.dimse_prot" in message
    assert "environment variable PACS_NODE__NODE__DIMSE_PROT" in message
    assert str(config) not in message


def test_bad_value_in_the_environment_names_the_variable(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_NODE__NODE__DIMSE_PORT", "eleven")
    message = _error(config)
    assert "node.dimse_port" in message
    assert "environment variable PACS_NODE__NODE__DIMSE_PORT" in message
    assert str(config) not in message


def test_unknown_section_in_the_environment_is_refused_not_ignored(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_NODE__NODES__DIMSE_PORT", "11113")
    message = _error(config)
    assert "environment variable PACS_NODE__NODES__DIMSE_PORT" in message


def test_bad_item_of_a_json_list_in_the_environment_names_the_variable(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_NODE__DESTINATIONS",
                       '[{"name": "pacs", "ae_title": "PACS", "host": "h", "port": 0}]')
    message = _error(config)
    assert "destinations.0.port" in message
    assert "environment variable PACS_NODE__DESTINATIONS" in message


def test_list_in_the_environment_that_is_not_json_names_the_variable(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_NODE__NODE__ALLOWED_CALLING_AES", "MODALITY")
    message = _error(config)
    assert "environment variable PACS_NODE__NODE__ALLOWED_CALLING_AES" in message


def test_typo_in_the_file_names_the_file_even_when_the_section_is_also_in_the_environment(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.write_text("node:\n  ae_title: PACSNODE\n  dimse_prot: 11112\n")
    monkeypatch.setenv("PACS_NODE__NODE__DIMSE_PORT", "11113")
    message = _error(config)
    assert f"node.dimse_prot: Extra inputs are not permitted (in {config})" in message
    assert "environment variable" not in message


def test_valid_environment_override_wins_over_the_file(
        config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_NODE__NODE__DIMSE_PORT", "11113")
    assert load_settings(config).node.dimse_port == 11113


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "pacs.example.org"])
def test_http_on_the_network_without_authentication_is_refused(config: Path,
                                                               host: str) -> None:
    config.write_text(f"node:\n  http_host: '{host}'\n")
    message = _error(config)
    assert "not a loopback address" in message and "http.allow_insecure" in message
    config.write_text(f"node:\n  http_host: '{host}'\nhttp:\n  allow_insecure: true\n")
    assert load_settings(config).node.http_host == host
    config.write_text(f"node:\n  http_host: '{host}'\nhttp:\n  enabled: false\n")
    assert not load_settings(config).http.enabled


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_http_on_loopback_needs_no_authentication(config: Path, host: str) -> None:
    config.write_text(f"node:\n  http_host: '{host}'\n")
    assert load_settings(config).http.enabled


def test_http_on_the_network_with_authentication_is_accepted(config: Path) -> None:
    config.write_text("node:\n  http_host: '0.0.0.0'\nhttp:\n  auth: true\n")
    settings = load_settings(config)
    assert settings.http.auth and settings.node.http_host == "0.0.0.0"


def test_a_dicomweb_archive_needs_no_dimse_address_and_a_dimse_one_does() -> None:
    from pydantic import ValidationError

    from pacs_node.config import Remote

    web = Remote(name="web", retrieve="dicomweb", url="http://127.0.0.1:8042/dicom-web")
    assert not web.dimse
    assert Remote(name="pacs", ae_title="PACS", host="127.0.0.1", port=104).dimse
    with pytest.raises(ValidationError, match="needs ae_title, host and port"):
        Remote(name="pacs", host="127.0.0.1", port=104)
