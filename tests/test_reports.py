"""ortrefine.reports: a report folder is claimed only when it is new, empty or ortrefine's own; nothing
the tool did not write is replaced, and no write follows a symlink."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ortrefine.errors import ExportError
from ortrefine.reports import MARKER, check_report_folder, claim_report_folder, write_file

NAMES = ("a.json", "b.md")


def test_new_and_empty_folders_are_claimed_and_marked(tmp_path):
    for folder in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        check_report_folder(folder, NAMES)
        assert folder.name == "empty" or not folder.exists()  # the check writes nothing
        claim = claim_report_folder(folder, NAMES)
        claim.write_text("a.json", "{}")
        marker = json.loads((folder / MARKER).read_text())
        assert marker["written_by"] == "ortrefine" and set(marker["files"]) == {"a.json"}
        assert sorted(p.name for p in folder.iterdir()) == [MARKER, "a.json"]  # no temp file left behind


def test_a_folder_ortrefine_did_not_write_is_refused(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    for call in (check_report_folder, claim_report_folder):
        with pytest.raises(ExportError) as e:
            call(folder, NAMES)
        assert "holds files ortrefine did not write (thesis.tex)" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="exists and is not a folder"):
        claim_report_folder(tmp_path / "file", NAMES)
    with pytest.raises(ExportError, match="lies under a file"):
        claim_report_folder(tmp_path / "file" / "sub", NAMES)
    # a forged or unreadable marker does not make a folder ortrefine's
    for text in ("not json", json.dumps({"files": {}}), json.dumps({"written_by": "ortrefine", "files": []})):
        (folder / MARKER).write_text(text)
        with pytest.raises(ExportError, match="did not write"):
            claim_report_folder(folder, NAMES)


def test_marker_that_is_a_symlink_is_not_trusted(tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"written_by": "ortrefine", "files": {}}))
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / MARKER).symlink_to(elsewhere)
    with pytest.raises(ExportError, match="did not write"):
        claim_report_folder(folder, NAMES)


def test_only_unchanged_files_of_its_own_are_replaced(tmp_path):
    folder = tmp_path / "out"
    claim_report_folder(folder, NAMES).write_text("a.json", "1")
    claim = claim_report_folder(folder, NAMES)  # its own folder: claimed again
    claim.write_text("a.json", "2")
    claim.write_text("b.md", "x")
    assert (folder / "a.json").read_text() == "2"
    (folder / "b.md").write_text("edited")  # the user's now
    with pytest.raises(ExportError, match=r"b.md not written by ortrefine \(or changed since"):
        claim_report_folder(folder, NAMES)
    (folder / "b.md").unlink()
    claim = claim_report_folder(folder, NAMES)
    # a file that appears after the claim is not replaced either
    (folder / "b.md").write_text("appeared")
    with pytest.raises(ExportError, match="b.md not written by ortrefine"):
        claim.write_text("b.md", "mine")
    assert (folder / "b.md").read_text() == "appeared"


def test_symlinks_are_refused_and_never_followed(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch")
    folder = tmp_path / "out"
    claim = claim_report_folder(folder, NAMES)
    (folder / "a.json").symlink_to(precious)
    with pytest.raises(ExportError, match=r"a.json \(a symbolic link\)"):
        claim.write_text("a.json", "x")
    with pytest.raises(ExportError, match=r"a.json \(a symbolic link\)"):
        claim_report_folder(folder, NAMES)
    (folder / "b.md").mkdir()
    with pytest.raises(ExportError, match=r"b.md \(not a regular file\)"):
        claim.write_text("b.md", "x")
    assert precious.read_text() == "do not touch" and (folder / "a.json").is_symlink()
    with pytest.raises(ExportError, match="is a symbolic link"):
        write_file(folder / "a.json", lambda f: f.write(b"x"))
    assert precious.read_text() == "do not touch"


def test_a_failed_write_leaves_no_temp_file_and_the_old_file(tmp_path):
    folder = tmp_path / "out"
    claim = claim_report_folder(folder, NAMES)
    claim.write_text("a.json", "old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        claim.write("a.json", boom)
    assert (folder / "a.json").read_text() == "old" and sorted(p.name for p in folder.iterdir()) == [MARKER, "a.json"]


def test_discard_removes_only_its_own_unchanged_file(tmp_path):
    folder = tmp_path / "out"
    claim_report_folder(folder, NAMES).write_text("a.json", "1")
    claim = claim_report_folder(folder, NAMES)
    claim.discard("a.json")
    assert not (folder / "a.json").exists()
    (folder / "b.md").write_text("user")
    claim.discard("b.md")
    assert (folder / "b.md").read_text() == "user"


def test_module_is_torch_free():
    code = "import sys, ortrefine.reports; bad = [m for m in ('torch', 'onnxruntime', 'matplotlib') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
