"""Two versions: artifacts (data, checkpoints, embeddings) keyed apart from records.

A release that changes only the probe search bumps the package version (``CODE_VERSION``):
its runs reuse every checkpoint, embedding and reconstruction result and recompute only the
record. A change to what the artifacts hold bumps ``ARTIFACT_VERSION``, which re-keys them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from embench.errors import DataError
from embench.leaderboard import load_records
from embench.results import RunRecord, load_record
from embench.runner import RunConfig, run
from embench.storage import ARTIFACT_VERSION, CODE_VERSION

BOARD = Path(__file__).resolve().parents[1] / "leaderboard" / "results"
#: The 0.4.0 quick board, retired from the published board when it moved to a larger scale.
ARCHIVE = BOARD.parent / "archive" / "quick-0.4.0" / "results"
#: A board record of embench 0.3.0 (AE, seed 0), as published before the artifact version.
OLD_RECORD = Path(__file__).parent / "data" / "record-embench-0.3.0.json"

pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")  # Box2D


@pytest.fixture
def home(_isolated_home, smoke_lunarlander, one_torch_thread):
    """This test's EMBENCH_HOME (conftest's), holding the smoke data already."""
    return smoke_lunarlander(_isolated_home)


def patch_everywhere(monkeypatch, name: str, value: str) -> list[str]:
    """Set ``name`` to ``value`` in every embench module holding it; return those modules."""
    original = getattr(sys.modules["embench.storage"], name)
    patched = [module_name for module_name, module in list(sys.modules.items())
               if module_name.split(".")[0] == "embench"
               and getattr(module, name, None) == original]
    for module_name in patched:
        monkeypatch.setattr(sys.modules[module_name], name, value)
    return patched


def test_a_package_version_bump_reuses_every_artifact_and_rekeys_the_record(home,
                                                                            monkeypatch):
    config = RunConfig(encoder="ae", task="lunarlander", preset="smoke", z=4)
    first = run(config)
    assert not first.checkpoint_hit and not first.cache_hit
    assert first.record.embench_version == CODE_VERSION
    assert first.record.artifact_version == ARTIFACT_VERSION

    bumped = "embench-99.0.0"  # a probe-only release: the artifact version stays
    patched = patch_everywhere(monkeypatch, "CODE_VERSION", bumped)
    assert {"embench.storage", "embench.results", "embench.runner"} <= set(patched)
    messages: list[str] = []
    second = run(config, log=messages.append)

    assert second.checkpoint_hit and second.cache_hit and not second.record_hit
    assert "reconstruction reused from the checkpoint" in messages
    record = second.record
    assert record.embench_version == bumped and record.artifact_version == ARTIFACT_VERSION
    for key in ("train", "encoder", "data", "embeddings"):  # the artifacts' keys
        assert record.fingerprints[key] == first.record.fingerprints[key]
    assert record.run_key != first.record.run_key
    assert record.protocol_id != first.record.protocol_id
    assert second.record_path != first.record_path and first.record_path.exists()
    assert record.reconstruction["test_l1_after"] == first.record.reconstruction["test_l1_after"]
    assert record.test == first.record.test  # the same probe search on the same embeddings
    assert record.consistency_problems() == []

    monkeypatch.undo()  # an older (or newer) embench rechecks it with the record's versions
    stored = load_record(second.record_path)
    assert (stored.embench_version, stored.artifact_version) == (bumped, ARTIFACT_VERSION)
    assert stored.consistency_problems() == []
    assert load_record(first.record_path).consistency_problems() == []


def test_an_artifact_version_bump_rekeys_the_checkpoint(home, monkeypatch):
    config = RunConfig(encoder="pca", task="lunarlander", preset="smoke")
    first = run(config)
    assert run(config).record_hit  # unchanged versions: nothing is recomputed

    bumped = "embench-99.0.0"
    patched = patch_everywhere(monkeypatch, "ARTIFACT_VERSION", bumped)
    assert "embench.runner" in patched
    second = run(config)

    assert not second.checkpoint_hit and not second.record_hit
    record = second.record
    assert record.fingerprints["train"] != first.record.fingerprints["train"]
    assert record.run_key != first.record.run_key
    assert record.artifact_version == bumped and record.embench_version == CODE_VERSION
    assert record.protocol_id == first.record.protocol_id  # same release: same table
    assert record.consistency_problems() == []


def test_a_record_from_before_the_split_loads_and_checks_out():
    path = OLD_RECORD
    data = json.loads(path.read_text())
    assert "artifact_version" not in data
    record = load_record(path)
    assert record.artifact_version is None and record.embench_version == "embench-0.3.0"
    assert record.consistency_problems() == []
    assert record.to_dict() == data  # written back unchanged: no invented field

    data["encoder_config"]["lr"] = 0.1  # the check is live
    problems = RunRecord.from_dict(data).consistency_problems()
    assert any("fingerprints.train" in p for p in problems)

    data["artifact_version"] = 3
    with pytest.raises(DataError, match="'artifact_version' should be str"):
        RunRecord.from_dict(data)


@pytest.mark.parametrize("board", [BOARD, ARCHIVE], ids=["published", "archived"])
def test_the_published_board_still_checks_out(board):
    loaded = load_records([board])
    assert loaded.problems == []
    assert len(loaded.records) == len(list(board.rglob("*.json"))) > 0


def test_the_board_re_probed_at_this_version_kept_its_artifacts():
    """The board's records were re-probed from 0.3.0's checkpoints and embeddings."""
    old = load_record(OLD_RECORD)
    [new] = [r for r in load_records([BOARD, ARCHIVE]).records
             if (r.encoder, r.z_dim, r.seed) == (old.encoder, old.z_dim, old.seed)
             and r.embench_version == "embench-0.4.0"]
    assert new.artifact_version == old.embench_version
    for key in ("train", "encoder", "data", "embeddings"):
        assert new.fingerprints[key] == old.fingerprints[key], key
    assert new.protocol_id != old.protocol_id and new.run_key != old.run_key


#: The code behind the artifacts that ARTIFACT_VERSION keys: data, training, embedding and
#: decoder retraining (the runner holds the last two stages).
ARTIFACT_CODE = ("encoders", "tasks", "embench/training", "embench/cache.py",
                 "embench/datastore.py", "embench/devices.py", "embench/presets.py",
                 "embench/runner.py")
#: Digest of that code (docstrings, comments and layout aside) when ARTIFACT_VERSION was set.
#: Re-pinned without a version bump where nothing stored can change: issue 26 moved task
#: loading, the board lookup and `reproduce` out of runner.py and changed its imports; issue
#: 24's encoders/reference.py adds encoders, whose artifacts have keys of their own, and
#: convergence_verdict moved from training/loop.py to protocols.py (it reads a finished
#: history; nothing it computes is stored in an artifact). Issue 26 split autoencoder.py,
#: perceptual_weights.py and tasks/_files.py into modules along their seams (pure moves).
#: Issue 26 gave the tasks declarative metadata (class_names, pixels_per_unit, label_origin),
#: read only by show and the conformance checks: no data, checkpoint or embedding changes;
#: the runner hands its task to the run's picture (no stored byte changes); verify_record
#: moved from runner.py to verify.py (it reruns a run; it stores nothing); fit calls
#: fit_module directly again, with the same arguments (no stored byte changes). runner.py
#: gained record_probe_settings and metric_problems, which verify and the bundle check share
#: (they read records and compare numbers; nothing is stored).
ARTIFACT_CODE_DIGEST = "3fe7d1dee12c929e80249337f894e57deed4988f9f68ed2532c9045c6dd1f9d6"


def artifact_code_digest() -> str:
    """sha256 over the artifact code's syntax trees, docstrings removed, in path order."""
    import ast
    import hashlib

    root = Path(__file__).resolve().parents[1]
    files = sorted(path for entry in ARTIFACT_CODE for path in (
        (root / entry).rglob("*.py") if (root / entry).is_dir() else [root / entry]))
    digest = hashlib.sha256()
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        digest.update(str(path.relative_to(root)).encode() + ast.dump(tree).encode())
    return digest.hexdigest()


def test_the_artifact_code_has_not_changed_under_its_version():
    """A tripwire: code that computes artifacts changed, but ARTIFACT_VERSION did not.

    If the change can alter any stored byte (data, a checkpoint, an embedding, a decoder
    retraining), bump ARTIFACT_VERSION in embench/storage.py to the package version; either
    way, pin the new digest here. Otherwise stale caches would be reused under the old key.
    """
    assert artifact_code_digest() == ARTIFACT_CODE_DIGEST, (
        f"the artifact code changed (digest {artifact_code_digest()}); bump ARTIFACT_VERSION "
        "if stored artifacts can change, then pin the digest in this test")
