"""The acceptance battery of issue 12: several hundred generated hostile and malformed
inputs (``hostile_inputs``: PDU, association, command, data set, C-FIND identifier and
bomb levels) against the in-process node and against ``pacs-node serve`` with its
embedded pipeline, while 40 idle or half-open connections are held and a good client
probes about every second (``battery``).

For each node: no Success (nor C-FIND match) for invalid data and nothing of it stored or
indexed; every complete request answered within 2 s; the good client never locked out
more than 5 s; RSS bounded (the subprocess node under 2 GiB; the test process, which is
the in-process node, grows less than 1 GiB); no traceback, forged or overlong line in the
node's log; no file written outside the node's store. ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tests.e2e import conftest as e2e

from .battery import Report, run_battery
from .dimse_helpers import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, ROOT, Node, make_instance, tree
from .hostile_inputs import TOKEN, all_cases, by_level

GiB = 1 << 30
CASES = all_cases()
INVALID_UIDS = frozenset(c.uid for c in CASES if c.uid and not c.allow_success)
BOMB_STUDY = f"{ROOT}.9.2"  # the 32000 x 32000 codestream the node may store, not decode
LOCKOUT_LIMIT_S = 5.0
LONGEST_LINE = 2000
FORGED = re.compile(r"^(ERROR|WARNING|INFO)?[: ]*fake", re.MULTILINE)  # a peer's own line


def test_the_battery_is_large_distinct_and_covers_every_level() -> None:
    levels = by_level(CASES)
    assert len(CASES) >= 200, levels
    assert len({c.name for c in CASES}) == len(CASES), "two cases with one name"
    assert all(c.level == c.name.split("/")[0] for c in CASES)
    minimum = {"pdu": 30, "association": 30, "command": 30, "dataset": 50, "c-find": 20,
               "bomb": 5}
    assert all(levels.get(level, 0) >= count for level, count in minimum.items()), levels
    # Each stored-or-not data set is its own instance (the command cases share one).
    own = [c.uid for c in CASES if c.level in ("dataset", "bomb") and c.uid]
    assert len(own) == len(set(own)) == len([c for c in CASES
                                             if c.level in ("dataset", "bomb") and c.dataset])


def _named(ports: dict[int, str], text: str) -> list[str]:
    """The cases whose connection ``text`` names (the node writes ``address:port``)."""
    return sorted({ports[int(p)] for p in re.findall(r"127\.0\.0\.1:(\d+)", text)
                   if int(p) in ports})


def _check(report: Report, *, indexed: Iterable[tuple[str, str]], store: Path,
           log_lines: list[str], tracebacks: list[str], written_outside: set[str],
           rss_ok: Callable[[Report], bool], rss_rule: str) -> None:
    """Assert every acceptance figure of one run; each failure names its cases."""
    ports = {o.answer.port: o.case.name for o in report.outcomes if o.answer.port}
    failures = report.failures
    assert not failures, f"{len(failures)} cases failed:\n" + "\n".join(failures[:60])
    # Nothing of the invalid data stored or indexed; every file in the store indexed.
    rows = dict(indexed)
    stored_invalid = sorted(INVALID_UIDS & set(rows))
    assert not stored_invalid, [c.name for c in CASES if c.uid in stored_invalid]
    files = {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}
    assert files == set(rows.values()), ("files in the store that are not indexed, or "
                                         f"the other way round: {files ^ set(rows.values())}")
    assert not [f for f in files if TOKEN in f]
    assert set(report.probes_stored) <= set(rows), "a good C-STORE answered Success, not held"
    assert report.probes >= report.seconds / 2, "the good client did not probe about every s"
    assert report.lockout <= LOCKOUT_LIMIT_S, \
        f"good client locked out {report.lockout:.1f} s: {report.failed_probes[:5]}"
    assert report.least_held >= 40, "the holder did not keep 40 connections open"
    assert rss_ok(report), f"RSS {rss_rule}: baseline {report.rss_baseline >> 20} MiB, " \
        f"peak {report.rss_peak >> 20} MiB"
    assert not tracebacks, f"{len(tracebacks)} tracebacks in the node's log, cases " \
        f"{_named(ports, ' '.join(tracebacks))}:\n" + "\n".join(tracebacks[:5])
    long = [line[:200] for line in log_lines if len(line) > LONGEST_LINE]
    assert not long, f"{len(long)} log lines longer than {LONGEST_LINE} characters: {long[:3]}"
    forged = FORGED.findall("\n".join(log_lines))
    assert not forged, "a peer's AE title wrote a log line of its own"
    assert not written_outside, f"written outside the store: {sorted(written_outside)[:10]}"
    assert not list(Path("/tmp").glob(f"*{TOKEN}*"))


def _around(folder: Path, *inside: Path) -> set[str]:
    """Every path under ``folder`` but those under ``inside`` (the store, the index)."""
    skip = [p.relative_to(folder).as_posix() for p in inside]
    return {p for p in tree(folder) if not any(p == s or p.startswith(f"{s}/")
                                               or p.startswith(f"{s}-") for s in skip)}


def _tracebacks(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()[:300]}" for r in records
            if r.exc_info is not None or r.exc_text or "Traceback" in r.getMessage()]


def test_hostile_battery_against_the_in_process_node(
        make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    node = make_node()
    # One study of someone else's, so a C-FIND that matched too much would show it.
    assert node.send(make_instance(7, 1, 1)) == [0]
    before = _around(node.tmp.parent, node.store.root, node.tmp / "index.db")
    report = run_battery("in-process", node.port, os.getpid(), CASES)
    written = _around(node.tmp.parent, node.store.root, node.tmp / "index.db") ^ before
    records = list(caplog.records)
    lines = [r.getMessage() for r in records if r.exc_info is None]
    with node.engine.connect() as connection:
        indexed = connection.exec_driver_sql(
            "SELECT sop_instance_uid, relpath FROM instances").fetchall()
    print("\n" + report.summary(by_level(CASES), [
        f"log: {len(records)} lines, {len(_tracebacks(records))} tracebacks; "
        f"{len(written)} paths written outside the store"]))
    _check(report, indexed=[tuple(r) for r in indexed], store=node.store.root,
           log_lines=lines, tracebacks=_tracebacks(records), written_outside=written,
           rss_ok=lambda r: r.rss_peak - r.rss_baseline < GiB,
           rss_rule="of the test process grew by 1 GiB or more")


def _bomb_result(node: e2e.NodeProcess) -> tuple[str, str] | None:
    rows = e2e.index_rows(node, "SELECT r.state, r.reason FROM results r JOIN studies s ON "
                                "r.study_id = s.id WHERE s.study_instance_uid = ?",
                          (BOMB_STUDY,))
    return (str(rows[-1][0]), str(rows[-1][1] or "")) if rows else None


def test_hostile_battery_against_the_subprocess_node(tmp_path: Path) -> None:
    node = e2e.make_node(tmp_path / "node", stable_seconds=2.0)  # memory://: embedded jobs
    node.start()
    store, index = Path(node.settings["storage"]["root"]), node.workdir / "index.db"
    metrics = node.workdir / "metrics"  # the node's counters (metrics.multiprocess_dir)
    bomb_stored: list[bool] = []
    results: list[tuple[str, str] | None] = []

    def pipeline_sees_the_bomb() -> None:
        """While the probes and the RSS sampling go on: if the node stored the
        32000 x 32000 codestream, its pipeline must call it too large, never decode it."""
        bomb = next(c for c in CASES if c.name == "bomb/jpeg2000-32000x32000-header-and-siz")
        bomb_stored.append(bool(e2e.index_rows(
            node, "SELECT id FROM instances WHERE sop_instance_uid = ?", (bomb.uid,))))
        if bomb_stored[0]:
            results.append(e2e.wait_for(lambda: _bomb_result(node), timeout=90,
                                        what="the pipeline's result for the bomb's study"))

    try:
        before = _around(tmp_path, store, index, metrics)
        assert node.process is not None
        report = run_battery("subprocess", node.port, node.process.pid, CASES,
                             between=pipeline_sees_the_bomb)
        written = _around(tmp_path, store, index, metrics) ^ before
    finally:
        node.stop()
    # The index and the store as the stopped node left them (its pipeline writes results).
    indexed = e2e.index_rows(node, "SELECT sop_instance_uid, relpath FROM instances")
    log = (node.workdir / "node-1.log").read_text(errors="replace")
    lines = log.splitlines()
    tracebacks = [m.group() for m in re.finditer(r"Traceback \(most recent call last\):"
                                                 r"(?:\n[ \t].*)*\n.*", log)]
    bomb = f"stored, the pipeline says {results}" if bomb_stored[0] else "refused"
    print("\n" + report.summary(by_level(CASES), [
        f"log: {len(lines)} lines, {len(tracebacks)} tracebacks; {len(written)} paths "
        "written outside the store", f"the 32000 x 32000 codestream: {bomb}"]))
    _check(report, indexed=indexed, store=store, log_lines=lines, tracebacks=tracebacks,
           written_outside={p for p in written if not p.endswith(".log")},
           rss_ok=lambda r: r.rss_peak < 2 * GiB, rss_rule="of the node reached 2 GiB")
    if bomb_stored[0]:
        assert results and results[0] is not None
        state, reason = results[0]
        assert state == "not_analysed" and reason.startswith("too large"), results
    # The test patient's name, ID and birth date never reach the log (the e2e check takes
    # name components as words, and "Patient" is one of highdicom's module names).
    for value in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "Secret"):
        assert value not in log, value
