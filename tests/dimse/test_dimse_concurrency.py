"""Several associations at once against the running SCP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pacs_node.dimse import StoreStatus

from .dimse_helpers import AE_TITLE, SCU_AE, Node, make_instance, part10, run_dcmtk, uid


def test_concurrent_associations_all_stored_and_indexed(node: Node) -> None:
    def sender(study: int) -> list[int]:
        return node.send(*[make_instance(study, 1 + n % 2, n) for n in range(10)])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(sender, range(1, 5)))

    assert results == [[StoreStatus.SUCCESS] * 10] * 4
    assert len(node.files()) == 40
    for study in range(1, 5):
        assert len(node.instances(StudyInstanceUID=uid(study))) == 10
    assert sorted(set(node.nudged)) == [uid(s) for s in range(1, 5)]
    assert len(node.nudged) == 40


def test_the_same_instances_from_several_senders_at_once(node: Node) -> None:
    instances = [make_instance(1, 1, n) for n in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: node.send(*instances), range(4)))

    assert results == [[StoreStatus.SUCCESS] * 8] * 4
    assert len(node.files()) == 8
    assert len(node.instances()) == 8
    assert len(node.nudged) == 8  # each instance is new content once


def test_concurrent_dcmtk_and_pynetdicom_senders(node: Node, tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    for n in range(10):
        (folder / f"{n}.dcm").write_bytes(part10(make_instance(7, 1, n)))

    def dcmtk() -> int:
        return run_dcmtk("storescu", "-aet", SCU_AE, "-aec", AE_TITLE, "+sd", "127.0.0.1",
                         str(node.port), str(folder)).returncode

    with ThreadPoolExecutor(max_workers=3) as pool:
        dcmtk_run = pool.submit(dcmtk)
        pynetdicom_runs = [pool.submit(node.send, *[make_instance(8 + s, 1, n)
                                                    for n in range(10)]) for s in range(2)]
        assert dcmtk_run.result() == 0
        assert [f.result() for f in pynetdicom_runs] == [[StoreStatus.SUCCESS] * 10] * 2

    assert len(node.instances()) == 30
