"""``benchmarks/seed_claims.py --quick``: every claim table, finite numbers, verdicts that
follow from the numbers, and the markdown/JSON twins on disk."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seed_claims.py"
CLAIMS = ("000", "001", "003", "004")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seed_claims", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("seed-claims")
    out = root / "results"
    _load_script().main(["--quick", "--work", str(root / "work"), "--out", str(out)])
    return json.loads((out / "seed_claims.json").read_text()), out


def _claim(report: dict[str, Any], seed: str) -> dict[str, Any]:
    return next(c for c in report["claims"] if c["seed"] == seed)


def _row(claim: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(r for r in claim["rows"] if r["method"].startswith(prefix))


def test_every_claim_has_a_table_of_finite_numbers_and_a_verdict(quick) -> None:
    report, _ = quick
    assert [c["seed"] for c in report["claims"]] == list(CLAIMS)
    for claim in report["claims"]:
        assert claim["verdict"] in ("HELD", "NOT HELD")
        assert claim["decided_by"]
        assert claim["rows"]
        for row in claim["rows"]:
            for key in (*claim["columns"], "train_s"):
                value = row[key]  # JSON null would mean NaN
                assert isinstance(value, int | float) and math.isfinite(value), (claim["seed"],
                                                                                row, key)
            assert row["steps"] > 0


def test_setup_records_seeds_sizes_budget_and_device(quick) -> None:
    report, _ = quick
    setup = report["setup"]
    assert setup["split_seeds"] == {"train": 2001, "test": 2003}
    assert (setup["epochs"], setup["input_size"], setup["batch_size"]) == (1, 64, 8)
    assert setup["device"] and setup["torch"]
    for split in ("hip/train", "hip/test", "wrist/train", "wrist/test"):
        data = report["data"][split]
        assert data["studies"] == (20 if split.endswith("train") else 16)
        assert 0 < data["positive_views"] < data["views"]
    runs = report["runs"]
    assert len(runs) == 13
    # The same budget for every method: one epoch of the same training views per anatomy.
    hip_steps = {r["steps"] for r in runs.values() if r["anatomy"] == "hip"}
    assert len(hip_steps) == 1


def test_verdicts_follow_from_the_table_numbers(quick) -> None:
    report, _ = quick
    c001 = _claim(report, "001")
    chain, stage1 = _row(c001, "two-stage chain"), _row(c001, "stage 1")
    held = chain["auroc"] > stage1["auroc"] and chain["s_at_r95"] > stage1["s_at_r95"]
    assert c001["verdict"] == ("HELD" if held else "NOT HELD")

    c004 = _claim(report, "004")
    alo, majority = _row(c004, "per-view model + ALO"), _row(c004, "per-view model + majority")
    assert c004["verdict"] == ("HELD" if alo["accuracy"] > majority["accuracy"] else "NOT HELD")

    c003 = _claim(report, "003")
    window, others = c003["rows"][0], c003["rows"][1:]
    held = all(window[m] > o[m] for o in others for m in ("froc_score", "recall_at_0.1fp"))
    assert c003["verdict"] == ("HELD" if held else "NOT HELD")

    c000 = _claim(report, "000")
    lbm = _row(c000, "LBM")
    held = all(_row(c000, name)[k] > lbm[k] for name in ("STL", "a-STN") for k in ("f1_2", "f1_3"))
    assert c000["verdict"] == ("HELD" if held else "NOT HELD")


def test_markdown_twin_has_setup_every_claim_and_its_verdict(quick) -> None:
    report, out = quick
    text = (out / "seed_claims.md").read_text()
    assert "## Setup" in text and "training data 2001, test data 2003" in text
    for claim in report["claims"]:
        section = text.split(f"## Seed {claim['seed']}:")[1].split("## Seed")[0]
        assert f"**{claim['verdict']}**: {claim['decided_by']}" in section
        assert len([line for line in section.splitlines() if line.startswith("| ")]) == (
            len(claim["rows"]) + 1)
