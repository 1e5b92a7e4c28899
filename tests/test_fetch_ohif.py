"""scripts/fetch_ohif.py without the network: the rebase of a build made for ``/`` onto
``/viewer/``, the integrity check, and the record that makes a second run do nothing."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_ohif.py"


@pytest.fixture(scope="module")
def fetch_ohif() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_ohif", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INDEX = ('<link rel="manifest" href="/manifest.json"><script>window.PUBLIC_URL="/"</script>'
         '<script src="/app-config.js"></script><script defer src="/app.bundle.0f61.js">'
         '</script><a href="//cdn.example/x">x</a>')
BUNDLE = ('__webpack_require__.p = "/";\n'
          "window.browserImportFunction('/dicom-microscopy-viewer/x.min.js');\n")
SR_CHUNK = ("const isImagingMeasurementReport = ConceptNameCodeSequence?.CodeValue === "
            "enums/* .CodeNameCodeSequenceValues.ImagingMeasurementReport */"
            ".n7.ImagingMeasurementReport;\n")


def _dist(root: Path) -> Path:
    dist = root / "dist"
    dist.mkdir()
    (dist / "index.html").write_text(INDEX)
    (dist / "app-config.js").write_text("window.config = {};")
    (dist / "app.bundle.0f61.js").write_text(BUNDLE)
    (dist / "12.bundle.aa.js").write_text('__webpack_require__.p = "/";')
    (dist / "7248.bundle.bb.js").write_text(SR_CHUNK)
    (dist / "app.bundle.css").write_text("src:url(/a34f.woff2) format('woff2')")
    (dist / "manifest.json").write_text('{"icons": [{"src": "/assets/a.png"}]}')
    return dist


def test_rebase_moves_every_root_url_under_the_base(fetch_ohif: ModuleType,
                                                    tmp_path: Path) -> None:
    dist = _dist(tmp_path)
    fetch_ohif.rebase(dist, "/viewer/")
    index = (dist / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in index
    assert 'href="/viewer/manifest.json"' in index and 'src="/viewer/app-config.js"' in index
    assert 'src="/viewer/app.bundle.0f61.js"' in index
    assert 'href="//cdn.example/x"' in index  # protocol-relative URLs are left alone
    for name in ("app.bundle.0f61.js", "12.bundle.aa.js"):
        assert '__webpack_require__.p = "/viewer/";' in (dist / name).read_text()
    assert "'/viewer/dicom-microscopy-viewer/" in (dist / "app.bundle.0f61.js").read_text()
    assert "url(/viewer/a34f.woff2)" in (dist / "app.bundle.css").read_text()
    assert '"src": "/viewer/assets/a.png"' in (dist / "manifest.json").read_text()


def test_patch_opens_a_report_without_measurements_as_text(fetch_ohif: ModuleType,
                                                           tmp_path: Path) -> None:
    dist = _dist(tmp_path)
    fetch_ohif.patch(dist)
    code = (dist / "7248.bundle.bb.js").read_text()
    assert ".n7.ImagingMeasurementReport && [].concat(instance.ContentSequence" in code
    assert "=== '126010' && [].concat(item.ContentSequence || []).length > 0);" in code
    (dist / "7248.bundle.bb.js").write_text("// another version")
    with pytest.raises(fetch_ohif.FetchError, match="in 0 bundles"):
        fetch_ohif.patch(dist)


def test_a_build_of_another_layout_is_refused(fetch_ohif: ModuleType, tmp_path: Path) -> None:
    dist = _dist(tmp_path)
    (dist / "app.bundle.0f61.js").write_text("__webpack_require__.p = 'auto';")
    (dist / "12.bundle.aa.js").write_text("")
    with pytest.raises(fetch_ohif.FetchError, match="public path"):
        fetch_ohif.rebase(dist, "/viewer/")


def _tarball(path: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (("package/dist/index.html", INDEX),
                           ("package/dist/app-config.js", "window.config = {};"),
                           ("package/dist/app.bundle.0f61.js", BUNDLE),
                           ("package/dist/7248.bundle.bb.js", SR_CHUNK),
                           ("package/package.json", "{}")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def test_fetch_checks_the_pinned_integrity_and_runs_once(
        fetch_ohif: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "ohif-app-9.9.9.tgz"
    integrity = _tarball(source)
    packed: list[Path] = []

    def fake_pack(version: str, work: Path, cache: Path) -> Path:
        assert cache.is_relative_to(work)  # npm's cache is temporary, inside --dest
        target = work / source.name
        target.write_bytes(source.read_bytes())
        packed.append(target)
        return target

    monkeypatch.setattr(fetch_ohif, "_pack", fake_pack)
    dest = tmp_path / "ohif"
    wrong = "sha512-" + base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(fetch_ohif.FetchError, match="is not the pinned"):
        fetch_ohif.fetch("9.9.9", wrong, dest, "/viewer/")
    assert not (dest / "dist").exists() and not (dest / fetch_ohif.MARKER).exists()

    assert fetch_ohif.fetch("9.9.9", integrity, dest, "/viewer/") is True
    assert 'window.PUBLIC_URL="/viewer/"' in (dest / "dist" / "index.html").read_text()
    assert not (dest / "dist" / "package.json").exists()  # only dist/ is unpacked
    record = json.loads((dest / fetch_ohif.MARKER).read_text())
    assert (record["version"], record["integrity"], record["base"]) == (
        "9.9.9", integrity, "/viewer/")
    assert sorted(p.name for p in dest.iterdir()) == ["dist", fetch_ohif.MARKER]

    assert fetch_ohif.fetch("9.9.9", integrity, dest, "/viewer/") is False
    assert len(packed) == 2  # the refused attempt and the install; the third did nothing
