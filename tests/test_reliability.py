"""Nothing lost, nothing leaked: what --overwrite may replace, one writer per target, interrupts,
hostile bundles and `verify`. Each test here failed on the code before the bundle package."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ortrefine.bundle import claim_output, find_stale, open_bundle, staging_dir, verify_bundle
from ortrefine.bundle.write import STAGING_MARK
from ortrefine.cli.main import cli
from ortrefine.errors import BundleError, ExportError


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to prove nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def bundle(tiny_bundles, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundles["llama"], tmp_path / "work" / "tiny-llama"))


def write_fake_bundle(final: Path, overwrite: bool = False, content: str = "new", **kw) -> None:
    """A minimal bundle written through the real staging path (no export needed)."""
    from ortrefine.bundle import write_manifest

    with staging_dir(final, overwrite, **kw) as tmp:
        (tmp / "model.onnx").write_text(content)
        (tmp / "tokenizer.json").write_text("{}")
        write_manifest(tmp, {"special_tokens": {"eos_ids": [0]}})


# --- --overwrite replaces only what ortrefine wrote -------------------------------------------


@pytest.mark.integration
def test_overwrite_refuses_a_folder_of_user_files(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    before = tree(user)
    r = CliRunner().invoke(cli, ["export", "tiny:llama", str(user), "--overwrite", "--no-validate"])
    assert r.exit_code == 1 and "not an ortrefine bundle" in r.output
    assert tree(user) == before


def test_overwrite_refuses_a_bundle_holding_foreign_files(tmp_path):
    final = tmp_path / "b"
    write_fake_bundle(final, content="old")
    (final / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="did not write .*notes.txt"):
        write_fake_bundle(final, overwrite=True)
    assert (final / "notes.txt").read_text() == "mine" and (final / "model.onnx").read_text() == "old"


def test_overwrite_replaces_a_bundle_atomically(tmp_path):
    final = tmp_path / "b"
    write_fake_bundle(final, content="old")
    write_fake_bundle(final, overwrite=True, content="new")
    assert (final / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging, lock or old copy left


def test_failed_swap_puts_the_old_bundle_back(tmp_path, monkeypatch):
    from ortrefine.bundle import write

    final = tmp_path / "b"
    write_fake_bundle(final, content="old")

    def fail(src, dst):
        raise OSError(5, "Input/output error", str(dst))

    monkeypatch.setattr(write, "rename_noreplace", fail)
    with pytest.raises(ExportError, match="Input/output error"):
        write_fake_bundle(final, overwrite=True, content="new")
    assert (final / "model.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_quantize_refuses_the_parents_folder_even_with_overwrite(bundle):
    sibling = bundle.parent / "other-bundle"
    shutil.copytree(bundle, sibling)
    (bundle.parent / "keep.txt").write_text("x")
    before = tree(bundle.parent)
    for out in (bundle.parent, bundle / "sub", bundle):
        r = CliRunner().invoke(cli, ["quantize", str(bundle), "--to", "int8", "--out", str(out), "--overwrite", "--force"])
        assert r.exit_code in (1, 2), r.output
        assert "Traceback" not in r.output
    assert tree(bundle.parent) == before


def test_no_overwrite_never_replaces_a_target_that_appeared_meanwhile(tmp_path):
    final = tmp_path / "b"
    with pytest.raises(ExportError, match="appeared while"):
        with staging_dir(final) as tmp:
            (tmp / "model.onnx").write_text("new")
            final.mkdir()  # someone else's empty folder, created while we worked
    assert final.is_dir() and list(final.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# --- one writer per target ----------------------------------------------------------------------


def test_second_writer_fails_naming_the_path(tmp_path):
    final = tmp_path / "b"
    with claim_output(final):
        with pytest.raises(ExportError, match=f"another ortrefine run .* is writing {final}"):
            write_fake_bundle(final)
    write_fake_bundle(final)  # the lock is gone with its holder
    assert (final / "model.onnx").read_text() == "new"


def test_two_quantize_processes_one_wins(bundle):
    out = bundle.parent / "q"
    code = textwrap.dedent(f"""
        import sys, time
        import ortrefine.export.quantize.api as q
        orig = q._write_quantized
        def slow(*a, **k):
            time.sleep(3)
            return orig(*a, **k)
        q._write_quantized = slow
        from ortrefine.cli.entry import main
        sys.exit(main(["quantize", {str(bundle)!r}, "--to", "int8", "--out", {str(out)!r}, "--force"]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    loser = next(text for rc, text in results if rc == 1)
    assert str(out) in loser and "Traceback" not in loser
    open_bundle(out)


# --- interrupts ---------------------------------------------------------------------------------

SLOW_EXPORT = """
import sys, time
import ortrefine.export.onnx_export as oe
orig = oe.validate_bundle_prepared
def slow(*a, **k):
    print("STAGED", flush=True)
    time.sleep(120)
    return orig(*a, **k)
oe.validate_bundle_prepared = slow
from ortrefine.cli.entry import main
sys.exit(main(sys.argv[1:]))
"""


def start_slow_export(tmp_path: Path, out: Path) -> subprocess.Popen:
    script = tmp_path / "slow_export.py"
    script.write_text(SLOW_EXPORT)
    p = subprocess.Popen([sys.executable, str(script), "export", "tiny:llama", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if "STAGED" in line:
            return p
    raise AssertionError("the export never reached its staging step")


@pytest.mark.integration
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_export_exits_cleanly_and_removes_staging(tmp_path, sig, code):
    root = tmp_path / "out"
    p = start_slow_export(tmp_path, root / "b")
    assert any(e.name.startswith(".b.tmp-") for e in root.iterdir())
    p.send_signal(sig)
    rest = p.stdout.read()
    assert p.wait(timeout=60) == code
    assert "Traceback" not in rest and rest.strip().splitlines()[-1].startswith("Error: interrupted by")
    assert list(root.iterdir()) == []


def test_sigint_during_startup_imports_is_one_line(tmp_path):
    """Interrupt while the command modules are still being imported."""
    code = ("import signal, os, threading\n"
            "threading.Timer(0.02, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
            "from ortrefine.cli.entry import main\n"
            "import time\n"
            "import sys\n"
            "sys.exit(main(['export', 'tiny:llama', sys.argv[1]]))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("Error: interrupted by SIGINT")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_kill_9_leftover_is_reported_then_removed_by_the_next_run(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("ORTREFINE_MODELS", str(root))
    p = start_slow_export(tmp_path, root / "b")
    p.kill()
    p.wait(timeout=60)
    stale = find_stale(root)
    assert [s.kind for s in stale] == ["staging"] and (stale[0].path / STAGING_MARK).exists()
    r = CliRunner().invoke(cli, ["doctor"])
    assert r.exit_code == 0 and str(stale[0].path) in r.output
    r = CliRunner().invoke(cli, ["export", "tiny:llama", str(root / "b"), "--no-validate"])
    assert r.exit_code == 0, r.output
    assert sorted(e.name for e in root.iterdir()) == ["b"]


def test_a_swap_cut_short_is_finished_by_the_next_writer(tmp_path):
    """killed between moving the old bundle aside and moving the new one in: the journal says where it went."""
    final = tmp_path / "b"
    write_fake_bundle(final, content="old")
    (tmp_path / ".b.swap").write_text(json.dumps({"target": "b", "old": ".b.old-deadbeef", "staging": ".b.tmp-gone"}))
    os.rename(final, tmp_path / ".b.old-deadbeef")
    assert [s.kind for s in find_stale(tmp_path)] == ["swap"]
    with claim_output(final, overwrite=True):
        assert (final / "model.onnx").read_text() == "old"  # put back before anything else happens
    write_fake_bundle(final, overwrite=True, content="new")
    assert (final / "model.onnx").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_users_hidden_old_folder_is_not_a_leftover(tmp_path):
    """A folder is never taken for a leftover by its name: `.a.old-keep` is the user's backup."""
    write_fake_bundle(tmp_path / ".a.old-keep", content="backup")
    write_fake_bundle(tmp_path / "a", content="new")
    write_fake_bundle(tmp_path / "a", overwrite=True, content="newer")
    assert (tmp_path / ".a.old-keep" / "model.onnx").read_text() == "backup"
    assert (tmp_path / "a" / "model.onnx").read_text() == "newer"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_swap_leaves_a_whole_bundle(tmp_path, monkeypatch, sig):
    """The signal is taken after the swap, not in the middle of it (the old code left no bundle)."""
    from ortrefine.bundle import write
    from ortrefine.cli.entry import install_signal_handlers

    final = tmp_path / "b"
    write_fake_bundle(final, content="old")
    real = write.rename_noreplace

    def signalled(src, dst):
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handler would run here if it were not deferred
        real(src, dst)

    monkeypatch.setattr(write, "rename_noreplace", signalled)
    old_int, old_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    install_signal_handlers()
    try:
        with pytest.raises(KeyboardInterrupt):
            write_fake_bundle(final, overwrite=True, content="new")
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    assert (final / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_lock_name_that_is_a_symlink_is_never_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    os.symlink(precious, tmp_path / ".b.lock")
    with pytest.raises(ExportError, match="symlink"):
        write_fake_bundle(tmp_path / "b")
    assert precious.read_text() == "mine" and (tmp_path / ".b.lock").is_symlink()


def test_a_users_file_named_like_a_lock_is_left_alone(tmp_path):
    (tmp_path / ".b.lock").write_text("my notes")
    with pytest.raises(ExportError, match="not written by ortrefine"):
        write_fake_bundle(tmp_path / "b")
    assert (tmp_path / ".b.lock").read_text() == "my notes"


def test_an_empty_folder_may_be_overwritten(tmp_path):
    (tmp_path / "b").mkdir()
    write_fake_bundle(tmp_path / "b", overwrite=True)
    assert (tmp_path / "b" / "model.onnx").read_text() == "new"


def test_the_current_folder_is_never_an_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(ExportError, match="current folder"):
            write_fake_bundle(Path(out), overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_a_long_name_gets_hashed_helper_names(tmp_path):
    final = tmp_path / ("x" * 240)
    write_fake_bundle(final)
    write_fake_bundle(final, overwrite=True, content="again")
    assert (final / "model.onnx").read_text() == "again" and [p.name for p in tmp_path.iterdir()] == [final.name]


def test_cleanup_never_touches_folders_without_the_marker(tmp_path):
    lookalike = tmp_path / ".b.tmp-user"
    lookalike.mkdir()
    (lookalike / "data").write_text("mine")
    write_fake_bundle(tmp_path / "b")
    assert (lookalike / "data").read_text() == "mine"


# --- hostile bundles and verify -----------------------------------------------------------------


def edit_manifest(bundle: Path, fn) -> None:
    m = json.loads((bundle / "ortrefine.json").read_text())
    fn(m)
    (bundle / "ortrefine.json").write_text(json.dumps(m))


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "sub/x", "..", ".hidden"])
def test_manifest_names_outside_the_bundle_are_refused(bundle, name):
    size = os.path.getsize("/etc/passwd")
    edit_manifest(bundle, lambda m: m["files"].__setitem__(name, {"bytes": size, "sha256": "0" * 64}))
    with pytest.raises(BundleError, match="not a plain file inside the bundle") as e:
        open_bundle(bundle)
    assert str(size) not in str(e.value)


def test_symlinked_file_is_refused_before_reading(bundle):
    edit_manifest(bundle, lambda m: m["files"].__setitem__("weights.bin", {"bytes": 0, "sha256": "0" * 64}))
    os.symlink("/dev/zero", bundle / "weights.bin")
    with pytest.raises(BundleError, match="symlink"):
        open_bundle(bundle, verify=True)  # would hash /dev/zero forever if followed


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.__setitem__("files", ["model.onnx"]), "'files' is not an object"),
    (lambda m: m["special_tokens"].__setitem__("eos_ids", "2"), "eos_ids"),
    (lambda m: m.__setitem__("context_length", "long"), "context_length"),
    (lambda m: m["files"]["model.onnx"].__setitem__("bytes", "x"), "byte count"),
])
def test_manifest_of_the_wrong_shape_is_one_line(bundle, edit, match):
    edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=match):
        open_bundle(bundle)
    r = CliRunner().invoke(cli, ["generate", "hi", "-m", str(bundle), "--max-new-tokens", "2"])
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit)
    assert r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1


def test_manifest_that_is_not_an_object(bundle):
    (bundle / "ortrefine.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="not a manifest object"):
        open_bundle(bundle)


def test_verify_finds_a_flipped_byte(bundle):
    r = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert r.exit_code == 0 and r.output.startswith("ok: ")
    data = bundle / "model.onnx_data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    r = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert r.exit_code == 1 and "model.onnx_data fails its sha256 check" in r.output
    with pytest.raises(BundleError):
        verify_bundle(bundle)


def test_verify_on_a_folder_that_is_not_a_bundle(tmp_path):
    r = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "ortrefine.json" in r.output


@pytest.mark.integration
def test_unwritable_output_is_one_line(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits: a read-only bind is not available in CI, so use a path under a file
        target = tmp_path / "a-file" / "b"
        (tmp_path / "a-file").write_text("x")
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = ro / "b"
    r = CliRunner().invoke(cli, ["export", "tiny:llama", str(target), "--no-validate"])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1, r.output
    assert (tmp_path / "a-file").read_text() == "x" if (tmp_path / "a-file").exists() else True


def test_export_gradient_never_replaces_a_file_it_did_not_write(bundle):
    from ortrefine.export.gradient import GradientExportConfig, export_gradient

    (bundle / "gradient.onnx").write_text("the user's own graph")
    with pytest.raises(ExportError, match="gradient.onnx, which ortrefine did not write"):
        export_gradient(GradientExportConfig(bundle=str(bundle), overwrite=True))
    assert (bundle / "gradient.onnx").read_text() == "the user's own graph"


SLOW_QUANTIZE = """
import sys, time
import ortrefine.export.quantize.api as q
orig = q._gate
def slow(*a, **k):
    print("STAGED", flush=True)
    time.sleep(120)
    return orig(*a, **k)
q._gate = slow
from ortrefine.cli.entry import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_quantize_killed_mid_write(bundle, tmp_path, sig):
    script = tmp_path / "slow_quantize.py"
    script.write_text(SLOW_QUANTIZE)
    out = bundle.parent / "q"
    p = subprocess.Popen([sys.executable, str(script), "quantize", str(bundle), "--to", "int8", "--out", str(out), "--force"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert any("STAGED" in line for line in p.stdout)
    p.send_signal(sig)
    p.stdout.read()
    rc = p.wait(timeout=60)
    names = sorted(e.name for e in bundle.parent.iterdir())
    if sig == signal.SIGTERM:
        assert rc == 143 and names == ["tiny-llama"]
    else:
        assert rc == -9 and [n for n in names if n.startswith(".q.tmp-")]
        r = CliRunner().invoke(cli, ["quantize", str(bundle), "--to", "int8", "--out", str(out), "--force"])
        assert r.exit_code == 0, r.output
        assert sorted(e.name for e in bundle.parent.iterdir()) == ["q", "tiny-llama"]


def test_verify_refuses_a_file_the_manifest_does_not_list(bundle):
    (bundle / "extra.bin").write_bytes(b"\0" * 64)  # a graph could point its external data here
    r = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert r.exit_code == 1 and "extra.bin not in the manifest" in r.output


def test_quantize_copies_only_listed_regular_files(bundle, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text("secret")
    os.symlink(secret, bundle / "notes.txt")
    (bundle / "mine.txt").write_text("mine")
    r = CliRunner().invoke(cli, ["quantize", str(bundle), "--to", "int8", "--out", str(bundle.parent / "q"), "--force"])
    assert r.exit_code == 0, r.output
    assert not (bundle.parent / "q" / "notes.txt").exists() and not (bundle.parent / "q" / "mine.txt").exists()


def test_export_gradient_does_not_adopt_the_users_files(bundle):
    from ortrefine.export.gradient import _commit

    (bundle / "NOTES.md").write_text("mine")
    old = open_bundle(bundle).manifest
    staged = bundle.parent / ".stage"
    staged.mkdir()
    (staged / "gradient.onnx").write_bytes(b"x")
    manifest = _commit(bundle, staged, ["gradient.onnx"], dict(old, gradient={"files": ["gradient.onnx"]}), old)
    assert "NOTES.md" not in manifest["files"]
    r = CliRunner().invoke(cli, ["export", "tiny:llama", str(bundle), "--overwrite", "--no-validate"])
    assert r.exit_code == 1 and (bundle / "NOTES.md").read_text() == "mine"


def test_two_gradient_exports_to_one_bundle_one_waits(bundle):
    from ortrefine.bundle.write import lock_target
    from ortrefine.export.gradient import GradientExportConfig, export_gradient

    with lock_target(bundle):
        with pytest.raises(ExportError, match="another ortrefine run"):
            export_gradient(GradientExportConfig(bundle=str(bundle)))
