"""llm_magics.safe_io: folders swapped whole, stale staging cleaned, checksums caught."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from llm_magics import safe_io
from llm_magics.errors import UsageError
from llm_magics.safe_io import CHECKSUMS, atomic_folder, clean_stale, verify_manifest, write_manifest


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_atomic_folder_creates_and_replaces_whole(tmp_path):
    target = tmp_path / "thing"
    with atomic_folder(target) as staging:
        (staging / "a.bin").write_bytes(b"one")
        (staging / "b.bin").write_bytes(b"two")
        write_manifest(staging)
        assert not target.exists()              # nothing under the name until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.bin", CHECKSUMS]
    with atomic_folder(target) as staging:
        (staging / "a.bin").write_bytes(b"new")
        assert (target / "b.bin").read_bytes() == b"two"    # old one whole while the new is written
    assert sorted(p.name for p in target.iterdir()) == ["a.bin"]
    assert hidden(tmp_path) == []


def test_error_in_the_block_keeps_the_old_folder(tmp_path):
    target = tmp_path / "thing"
    target.mkdir()
    (target / "a.bin").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as staging:
        (staging / "a.bin").write_bytes(b"half")
        raise KeyboardInterrupt
    assert (target / "a.bin").read_bytes() == b"old"
    assert hidden(tmp_path) == []


def test_keep_others_touches_only_owned_files(tmp_path):
    target = tmp_path / "adapter"
    with atomic_folder(target) as staging:
        (staging / "weights.bin").write_bytes(b"v1")
        (staging / "extra_v1_only.bin").write_bytes(b"x")
        write_manifest(staging)
    (target / "notes.md").write_text("my notes")
    (target / "evals").mkdir()
    (target / "evals" / "out.csv").write_text("a,b\n")
    inode = (target / "notes.md").stat().st_ino
    with atomic_folder(target, keep_others=True) as staging:
        (staging / "weights.bin").write_bytes(b"v2")
        write_manifest(staging)
    names = sorted(p.name for p in target.iterdir())
    assert names == ["evals", CHECKSUMS, "notes.md", "weights.bin"]   # the v1-only file was the adapter's
    assert (target / "notes.md").read_text() == "my notes" and (target / "notes.md").stat().st_ino == inode
    assert (target / "evals" / "out.csv").read_text() == "a,b\n"
    assert (target / "weights.bin").read_bytes() == b"v2"
    assert verify_manifest(target) == []


def test_a_kill_inside_the_block_leaves_the_old_folder_and_the_next_save_cleans_up(tmp_path):
    target = tmp_path / "thing"
    with atomic_folder(target) as staging:
        (staging / "a.bin").write_bytes(b"old")
    script = textwrap.dedent(f"""
        import os
        from llm_magics.safe_io import atomic_folder
        with atomic_folder({str(target)!r}) as staging:
            (staging / "a.bin").write_bytes(b"partial")
            os._exit(9)
    """)
    subprocess.run([sys.executable, "-c", script], check=False)
    assert (target / "a.bin").read_bytes() == b"old"
    assert len(hidden(tmp_path)) == 1                     # the dead save's staging folder
    with atomic_folder(target) as staging:
        (staging / "a.bin").write_bytes(b"new")
    assert (target / "a.bin").read_bytes() == b"new"
    assert hidden(tmp_path) == []


def test_killed_between_two_renames_the_old_folder_comes_back(tmp_path):
    target = tmp_path / "thing"
    old = tmp_path / f".thing.old-{dead_pid()}-abcd1234"
    old.mkdir()
    (old / "a.bin").write_bytes(b"old")
    fresh = tmp_path / f".thing.new-{dead_pid()}-efgh5678"
    fresh.mkdir()
    clean_stale(target)
    assert (target / "a.bin").read_bytes() == b"old"
    assert hidden(tmp_path) == []


def test_a_live_save_and_other_names_are_left_alone(tmp_path):
    live = tmp_path / f".thing.new-{os.getppid()}-abcd1234"      # our parent process: alive
    other = tmp_path / f".thing.new-1.new-{dead_pid()}-abcd1234"  # staging of an index named 'thing.new-1'
    user = tmp_path / ".thing.notes"
    for folder in (live, other, user):
        folder.mkdir()
    clean_stale(tmp_path / "thing")
    assert live.exists() and other.exists() and user.exists()


def test_fallback_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_io, "exchange", lambda a, b: False)
    target = tmp_path / "thing"
    for content in (b"one", b"two"):
        with atomic_folder(target) as staging:
            (staging / "a.bin").write_bytes(content)
    assert (target / "a.bin").read_bytes() == b"two"
    assert hidden(tmp_path) == []


def test_a_file_or_an_unwritable_place_is_one_usage_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="is a file"), atomic_folder(tmp_path / "file.txt"):
        pass
    with pytest.raises(UsageError, match="cannot write"), atomic_folder("/proc/llm_magics_x"):
        pass
    with pytest.raises(UsageError, match="cannot write"), atomic_folder(tmp_path / "file.txt" / "sub"):
        pass


def test_verify_manifest_names_what_changed(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"0123456789")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(b"abc")
    write_manifest(folder)
    assert verify_manifest(folder) == []
    assert set(json.loads((folder / CHECKSUMS).read_text())["files"]) == {"a.bin", "sub/b.bin"}
    (folder / "a.bin").write_bytes(b"01234")
    (folder / "sub" / "b.bin").write_bytes(b"abd")
    problems = verify_manifest(folder)
    assert any("a.bin has 5 bytes where 10 were written" in p for p in problems)
    assert any("sub/b.bin does not match the checksum" in p for p in problems)
    assert verify_manifest(folder, sizes_only=True) == [problems[0]]
    (folder / "sub" / "b.bin").unlink()
    assert "sub/b.bin is missing" in verify_manifest(folder)
    (folder / CHECKSUMS).write_text("{not json")
    assert verify_manifest(folder) == [f"{CHECKSUMS} is not a valid checksum list"]
    (folder / CHECKSUMS).write_text(json.dumps({"format": 1, "files": {"../x": {"size": 1, "sha256": "0"}}}))
    assert "outside the folder" in verify_manifest(folder)[0]
    (folder / CHECKSUMS).unlink()
    assert verify_manifest(folder) == []
    assert verify_manifest(folder, required=True) == [f"{CHECKSUMS} is missing"]


def test_a_linked_folder_is_replaced_where_it_lives_and_the_link_stays(tmp_path):
    real = tmp_path / "real"
    with atomic_folder(real) as staging:
        (staging / "a.bin").write_bytes(b"one")
    link = tmp_path / "link"
    link.symlink_to(real)
    with atomic_folder(link) as staging:
        (staging / "a.bin").write_bytes(b"two")
    assert link.is_symlink() and (link / "a.bin").read_bytes() == b"two" and (real / "a.bin").read_bytes() == b"two"
    assert hidden(tmp_path) == []
