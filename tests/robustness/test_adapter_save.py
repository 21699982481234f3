"""Adapter folders: saved whole over an old one, user files kept, damaged ones refused on load."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from llm_magics import api
from llm_magics.adapters import hub
from llm_magics.errors import UsageError
from llm_magics.safe_io import CHECKSUMS

TEXTS = ["best clever days", "worst waste"]


@pytest.fixture(autouse=True)
def empty_hub():
    hub().release()
    yield
    hub().release()


@pytest.fixture
def trained(tiny_bert, separable):
    frame, _, _ = separable
    return api.lora(model=str(tiny_bert), data=frame, epochs=1, dtype="float32", seed=0, method="lora", lr=1e-2,
                    name="ad")


def hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def one_usage_line(shell, capsys, line):
    capsys.readouterr()
    result = shell.run_cell(line)
    out = capsys.readouterr()
    lines = [x for x in (out.out + out.err).splitlines() if x.strip()]
    assert not result.success and len(lines) == 1 and lines[0].startswith("UsageError:"), lines
    return lines[0]


def test_saving_over_an_adapter_keeps_the_users_files_and_swaps_the_adapter_whole(trained, tmp_path):
    folder = trained.save(tmp_path / "ad")
    listed = set(json.loads((folder / CHECKSUMS).read_text())["files"])
    assert {"adapter_model.safetensors", "adapter_config.json", "llm_magics_adapter.json"} <= listed
    (folder / "notes.md").write_text("lr 1e-2 looked best")
    (folder / "evals").mkdir()
    (folder / "evals" / "test.csv").write_text("acc\n0.9\n")
    (folder / "stale_adapter_file.bin").write_bytes(b"old")       # listed as the adapter's: replaced
    from llm_magics.safe_io import write_manifest
    write_manifest(folder, sorted(listed) + ["stale_adapter_file.bin"])
    before = trained.logits(TEXTS)
    trained.save(folder)
    assert (folder / "notes.md").read_text() == "lr 1e-2 looked best"
    assert (folder / "evals" / "test.csv").read_text() == "acc\n0.9\n"
    assert not (folder / "stale_adapter_file.bin").exists()
    assert hidden(tmp_path) == []
    hub().release()
    torch.testing.assert_close(api.lora.load(path=str(folder)).logits(TEXTS), before, atol=1e-5, rtol=0)


def test_a_save_that_fails_midway_leaves_the_old_adapter_whole(trained, tmp_path, monkeypatch):
    folder = trained.save(tmp_path / "ad")
    weights = (folder / "adapter_model.safetensors").read_bytes()
    folder_module = importlib.import_module("llm_magics.adapters.folder")

    def broken(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(folder_module, "write_manifest", broken)
    with pytest.raises(KeyboardInterrupt):
        trained.save(folder)
    monkeypatch.undo()
    assert (folder / "adapter_model.safetensors").read_bytes() == weights
    assert hidden(tmp_path) == []
    hub().release()
    api.lora.load(path=str(folder))


def test_a_process_killed_while_saving_leaves_one_whole_adapter_and_the_next_load_cleans_up(trained, tmp_path):
    folder = trained.save(tmp_path / "ad")
    weights = (folder / "adapter_model.safetensors").read_bytes()
    script = textwrap.dedent(f"""
        import os
        from llm_magics import api
        import importlib
        folder_module = importlib.import_module("llm_magics.adapters.folder")
        api.lora.load(path={str(folder)!r}, name="again")
        def killed(*args, **kwargs):
            os._exit(9)                      # SIGKILL-like: no cleanup runs
        folder_module.write_manifest = killed
        api.lora.save(name="again", path={str(folder)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert (folder / "adapter_model.safetensors").read_bytes() == weights
    assert len(hidden(tmp_path)) == 1                                  # the dead save's staging folder
    hub().release()
    api.lora.load(path=str(folder))
    assert hidden(tmp_path) == []


def test_staging_folders_left_by_earlier_versions_are_removed(trained, tmp_path):
    folder = trained.save(tmp_path / "ad")
    orphan = tmp_path / ".ad-k2j4h5g6"
    orphan.mkdir()
    (orphan / "adapter_model.safetensors").write_bytes(b"half")
    os.utime(orphan, (0, 0))
    trained.save(folder)
    assert hidden(tmp_path) == []


def test_saving_to_a_file_or_an_unwritable_place_is_one_usage_line(trained, tmp_path, shell, capsys):
    (tmp_path / "model.txt").write_text("not a folder")
    assert "is a file" in one_usage_line(shell, capsys, f"%lora save ad {tmp_path / 'model.txt'}")
    assert "cannot write /proc/x" in one_usage_line(shell, capsys, "%lora save ad /proc/x")
    assert (tmp_path / "model.txt").read_text() == "not a folder"


def edit_meta(folder, change):
    path = folder / "llm_magics_adapter.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


W, META, CONFIG = "adapter_model.safetensors", "llm_magics_adapter.json", "adapter_config.json"
DAMAGE = {   # what to do: (damage, the file named with checksums, what is named without them)
    "truncated weights": (lambda f: (f / W).write_bytes((f / W).read_bytes()[:300]), W,
                          f"{W} is not a whole safetensors file"),
    "missing weights": (lambda f: (f / W).unlink(), W, f"{W} is missing"),
    "meta not JSON": (lambda f: (f / META).write_text("{"), META, f"{META} is not valid JSON"),
    "meta extended": (lambda f: edit_meta(f, lambda d: d.update(trust_remote_code=True)), META,
                      "unknown field(s) trust_remote_code"),
    "meta mistyped": (lambda f: edit_meta(f, lambda d: d.update(trainable_params="many")), META,
                      "trainable_params is 'many'"),
    "meta unknown method": (lambda f: edit_meta(f, lambda d: d.update(method="evil")), META, "method 'evil'"),
    "config not JSON": (lambda f: (f / CONFIG).write_text("[1,"), CONFIG, f"{CONFIG} is not valid JSON"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "legacy"])
def test_a_damaged_adapter_is_one_usage_error_naming_the_file(trained, tmp_path, case, checksums):
    folder = trained.save(tmp_path / "ad")
    if not checksums:
        (folder / CHECKSUMS).unlink()
    damage, file, detail = DAMAGE[case]
    damage(folder)
    hub().release()
    with pytest.raises(UsageError) as caught:
        api.lora.load(path=str(folder))
    message = str(caught.value)
    assert (file if checksums else detail) in message and "save it again" in message, message
    assert str(folder) in message


def test_a_changed_weight_under_a_valid_header_is_caught_by_the_checksum(trained, tmp_path):
    folder = trained.save(tmp_path / "ad")
    path = folder / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x00\x00"                  # one weight zeroed: safetensors would load it happily
    path.write_bytes(bytes(data))
    hub().release()
    with pytest.raises(UsageError, match="adapter_model.safetensors does not match the checksum"):
        api.lora.load(path=str(folder))


def test_a_damaged_adapter_in_a_shell_is_one_line(trained, tmp_path, shell, capsys):
    folder = trained.save(tmp_path / "ad")
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    hub().release()
    assert "damaged" in one_usage_line(shell, capsys, f"%lora load {folder}")
