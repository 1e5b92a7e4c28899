"""Fetch the prebuilt OHIF viewer (npm package ``@ohif/app``) for the node to serve.

``make install`` runs this with the pinned version and integrity from the Makefile:

1. ``npm pack @ohif/app@<version>`` into a folder under ``--dest`` (npm checks the tarball
   against the registry's integrity; its cache is a temporary folder under ``--dest``, so
   nothing is written outside the repository);
2. the tarball's SHA-512 is checked against the pinned ``--integrity`` (a version
   republished with other content, or another registry's copy, is refused);
3. ``package/dist/`` is unpacked and rebased from the site root to ``--base``: the build
   assumes it is served at ``/`` (asset URLs in index.html, ``window.PUBLIC_URL``, the
   webpack public path in the bundles, the manifest's icons), the node serves it at
   ``/viewer/``; and one patch (:func:`patch`) lets it open our SR of a study without
   candidate regions;
4. the result replaces ``<dest>/dist`` in one rename and ``<dest>/installed.json`` records
   what is there. A second run with the same pins finds that record and does nothing.

Standard library only: it runs before the virtual environment has anything in it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@ohif/app"
MARKER = "installed.json"
# Bumped whenever rebase() or patch() changes, so that `make install` redoes an older copy.
REBASE_VERSION = 3
# OHIF (3.13.2) opens an Imaging Measurement Report in its measurement viewport, which shows
# measurements[0] and fails ("Something went wrong") when the report has no measurement
# group: our SR of a study without candidate regions. patch() sends such a report to OHIF's
# SR text viewport, which shows its content (impression, verdicts, comments).
_IMR_TEST = re.compile(
    r"(const isImagingMeasurementReport = ConceptNameCodeSequence\?\.CodeValue === "
    r"[^;]*?\.ImagingMeasurementReport);")
_HAS_GROUPS = (r"\g<1> && [].concat(instance.ContentSequence || []).some(item => "
               r"item.ConceptNameCodeSequence?.CodeValue === '126010' && "
               r"[].concat(item.ContentSequence || []).length > 0);")


class FetchError(RuntimeError):
    """The viewer could not be fetched, verified or unpacked."""


def _integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _pack(version: str, work: Path, cache: Path) -> Path:
    """``npm pack`` the pinned version into ``work``; returns the tarball."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed (Debian: apt-get install npm)")
    cmd = [npm, "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", str(work),
           "--cache", str(cache), "--no-fund", "--no-audit", "--loglevel", "error"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, check=False)
    if done.returncode != 0:
        raise FetchError(f"npm pack {PACKAGE}@{version} failed: {done.stderr.strip()[-2000:]}")
    try:
        info = json.loads(done.stdout)[0]
        tarball = work / info["filename"]
    except (ValueError, KeyError, IndexError) as exc:
        raise FetchError(f"npm pack printed no tarball name: {done.stdout[:500]!r}") from exc
    if info.get("version") != version:
        raise FetchError(f"npm pack gave version {info.get('version')}, not {version}")
    return tarball


def _unpack_dist(tarball: Path, target: Path) -> None:
    """Unpack ``package/dist/*`` of ``tarball`` into ``target`` (regular files only)."""
    prefix = "package/dist/"
    count = 0
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or not member.isfile():
                continue
            relative = Path(member.name[len(prefix):])
            if relative.is_absolute() or ".." in relative.parts:
                raise FetchError(f"unsafe path in the tarball: {member.name!r}")
            out = target / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                continue
            with source, out.open("wb") as fh:
                shutil.copyfileobj(source, fh)
            count += 1
    for required in ("index.html", "app-config.js"):
        if not (target / required).is_file():
            raise FetchError(f"{tarball.name} has no dist/{required}: not a prebuilt viewer")
    print(f"unpacked {count} files of dist/")


def _substitute(path: Path, pattern: str, replacement: str, *, required: bool) -> int:
    text = path.read_text(encoding="utf-8")
    new, n = re.subn(pattern, replacement, text)
    if n == 0 and required:
        raise FetchError(f"{path.name}: found nothing to rebase ({pattern!r}); "
                         "the build layout changed, check the pinned version")
    if n:
        path.write_text(new, encoding="utf-8")
    return n


def rebase(dist: Path, base: str) -> None:
    """Rewrite a build made for ``/`` so it works when served at ``base`` (``/x/``)."""
    # index.html: asset URLs and the public URL the app reads at start.
    index = dist / "index.html"
    _substitute(index, r'((?:href|src)=")/(?!/)', rf"\g<1>{base}", required=True)
    _substitute(index, r'window\.PUBLIC_URL="/"', f'window.PUBLIC_URL="{base}"', required=True)
    # The webpack runtime's public path: chunks, workers and wasm are loaded from it.
    patched = sum(
        _substitute(js, r'__webpack_require__\.p = "/";', f'__webpack_require__.p = "{base}";',
                    required=False)
        for js in sorted(dist.glob("*.js"))
    )
    if not any(dist.glob("app.bundle.*.js")) or patched == 0:
        raise FetchError("no bundle sets the webpack public path: check the pinned version")
    for css in sorted(dist.glob("*.css")):  # fonts: url(/a34f9d1faa5f3315.woff2)
        _substitute(css, r"url\((['\"]?)/(?!/)", rf"url(\g<1>{base}", required=False)
    for js in sorted(dist.glob("app.bundle.*.js")):
        _substitute(js, r"browserImportFunction\('/(?!/)", f"browserImportFunction('{base}",
                    required=False)
    manifest = dist / "manifest.json"
    if manifest.is_file():
        _substitute(manifest, r'("src":\s*")/(?!/)', rf"\g<1>{base}", required=False)
    print(f"rebased to {base} ({patched} bundles set the public path)")


def patch(dist: Path) -> None:
    """Make the viewer open a measurement report without measurements as text (see
    ``_IMR_TEST``); refuses a build where the code to patch is not found exactly once."""
    found = [js for js in sorted(dist.glob("*.js")) if _IMR_TEST.search(js.read_text("utf-8"))]
    if len(found) != 1:
        raise FetchError(f"the SR display-set code is in {len(found)} bundles, not 1: "
                         "check the pinned version")
    _substitute(found[0], _IMR_TEST.pattern, _HAS_GROUPS, required=True)
    print(f"patched {found[0].name}: a report without measurements opens as text")


def fetch(version: str, integrity: str, dest: Path, base: str) -> bool:
    """Install the viewer into ``dest/dist``; False when it was already there."""
    marker = dest / MARKER
    wanted = {"package": PACKAGE, "version": version, "integrity": integrity, "base": base,
              "rebase": REBASE_VERSION}
    if marker.is_file() and (dest / "dist" / "index.html").is_file():
        try:
            if json.loads(marker.read_text()) == wanted:
                return False
        except ValueError:
            pass
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-", dir=dest) as tmp:
        work = Path(tmp)
        tarball = _pack(version, work, work / "npm-cache")
        got = _integrity(tarball)
        if got != integrity:
            raise FetchError(f"{tarball.name}: integrity {got} is not the pinned {integrity}")
        print(f"{PACKAGE}@{version}: integrity {got} matches the pin")
        staged = work / "dist"
        _unpack_dist(tarball, staged)
        rebase(staged, base)
        patch(staged)
        marker.unlink(missing_ok=True)
        old = dest / "dist"
        if old.exists():
            old.rename(work / "old-dist")
        staged.rename(old)
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="the pinned @ohif/app version")
    parser.add_argument("--integrity", required=True, help="its pinned sha512-... integrity")
    parser.add_argument("--dest", type=Path, required=True,
                        help="folder that receives dist/ and installed.json")
    parser.add_argument("--base", default="/viewer/", help="URL path the node serves it at")
    args = parser.parse_args(argv)
    if not (args.base.startswith("/") and args.base.endswith("/")):
        parser.error(f"--base must start and end with '/', got {args.base!r}")
    if not args.integrity.startswith("sha512-"):
        parser.error(f"--integrity must be a sha512-... string, got {args.integrity!r}")
    try:
        changed = fetch(args.version, args.integrity, args.dest.resolve(), args.base)
    except FetchError as exc:
        print(f"fetch_ohif: {exc}", file=sys.stderr)
        return 1
    where = args.dest / "dist"
    print(f"OHIF {args.version} {'installed in' if changed else 'already in'} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
