"""The public plugin surface: llm_magics.plugin / training / testing, the registry's checks,
and the house rules that keep it honest (no module reaches into methods/ but the registry)."""
import ast
import importlib
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llm_magics import plugin, testing, training
from llm_magics.method import RECORD_KEYS, Command, Method, Result
from llm_magics.registry import Registry, _reason, install_hint
from tests.helpers import TESTS_DIR

PACKAGE = Path(plugin.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the llm_magics modules `path` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
                out.add(name)
                if not node.module:  # from .. import x: x may be a module
                    out |= {f"{base}.{alias.name}" for alias in node.names}
            else:
                out.add(node.module)
                out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def _outside_methods_importing_methods() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "methods" == path.relative_to(PACKAGE).parts[0]:
            continue
        for name in _imported_modules(path):
            if name == "llm_magics.methods" or name.startswith("llm_magics.methods."):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    return bad


def test_no_module_outside_methods_imports_one_inside():
    assert _outside_methods_importing_methods() == []


def test_the_methods_import_check_sees_relative_imports(tmp_path, monkeypatch):
    fake = PACKAGE / "engine" / "zz_fake_for_test.py"
    fake.write_text("from ..methods.lora import LoraMethod\n")
    try:
        assert _outside_methods_importing_methods() == ["llm_magics/engine/zz_fake_for_test.py imports "
                                                        "llm_magics.methods.lora"]
    finally:
        fake.unlink()


def test_trl_is_imported_only_where_preferences_train():
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if any(n == "trl" or n.startswith("trl.") for n in _imported_modules(p))]
    assert all(u.startswith(("preference", "methods/rlhf")) for u in users), users


@pytest.mark.parametrize("module", [plugin, training, testing])
def test_public_modules_export_what_they_list(module):
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_plugin_bundles_come_from_the_training_base():
    assert plugin.ClassificationOptions is training.ClassificationOptions
    with pytest.raises(AttributeError, match="public:"):
        plugin.NotAThing  # noqa: B018


def test_record_keys_are_the_run_stores_columns():
    from llm_magics.runs.store import COLUMNS
    assert set(COLUMNS) - {"created"} == set(RECORD_KEYS)
    assert set(Result(method="m").record()) == set(RECORD_KEYS)


def test_a_dataclass_subclass_keeps_the_one_line_repr():
    @dataclass
    class Big(Result):
        payload: str = "x" * 5000

    r = Big(method="big", metrics={"test_accuracy": 0.5})
    assert repr(r).startswith("<Big big · run") and len(repr(r)) < 200
    assert len(repr(training.TrainedResult(method="t"))) < 200


def test_missing_package_hint_names_the_distribution():
    assert install_hint("sklearn.linear_model") == "pip install scikit-learn"
    assert install_hint("faiss") == "pip install faiss-cpu"
    assert install_hint("sentence_transformers") == "pip install sentence-transformers"
    err = ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    assert _reason(err) == "missing package 'sklearn' (pip install scikit-learn)"


@dataclass
class _NoOptions:
    pass


class _GoodMethod(Method):
    name = "good"
    Options = _NoOptions
    commands = {"list": Command(_NoOptions, "list_things")}

    def list_things(self, o, ctx):
        return []


def test_registration_checks_name_options_and_handlers():
    reg = Registry()
    reg.add(_GoodMethod)

    class Misnamed(_GoodMethod):
        name = "other"
    with pytest.raises(TypeError, match="must equal Method.name"):
        from llm_magics.registry import _validate
        _validate("good", Misnamed)

    class BadHandler(_GoodMethod):
        name = "bad"
        commands = {"list": Command(_NoOptions, "lsit_things")}
    with pytest.raises(TypeError, match="names handler 'lsit_things'"):
        reg.add(BadHandler)


def _fake_dist(site: Path, dist: str, entry: str) -> None:
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[llm_magics.methods]\n{entry}\n")


def test_a_name_two_packages_declare_is_shown_as_a_conflict(tmp_path, monkeypatch, shell):
    from llm_magics import registry as registry_mod
    _fake_dist(tmp_path, "aaa-first", "twin = aaa_first:Twin")
    _fake_dist(tmp_path, "zzz-second", "twin = zzz_second:Twin")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry_mod, "_registry", None)
    try:
        reg = registry_mod.registry()
        assert len(reg.conflicts) == 1 and "'twin'" in reg.conflicts[0]
        frame = shell.run_line_magic("llm", "methods").frames()["methods"]
        twins = frame[frame["name"] == "twin"]
        assert len(twins) == 2
        assert "conflict" in set(twins["status"])
        loser = twins[twins["status"] == "conflict"].iloc[0]
        assert "also declares 'twin'" in loser["error"]
    finally:
        monkeypatch.setattr(registry_mod, "_registry", None)


def test_help_lists_the_methods_own_options_first():
    from llm_magics.methods.finetune import FinetuneMethod
    text = FinetuneMethod.help()
    assert text.index("--train ") < text.index("--feature-cache") < text.index("--epochs") < text.index("--model")


def test_help_names_the_method_file(shell):
    info = shell.object_inspect("%finetune")
    assert info["file"].endswith("llm_magics/methods/finetune.py")


def test_param_groups_get_their_own_learning_rate():
    from llm_magics.engine.loop import TrainConfig, make_optimizer
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    config = TrainConfig(lr=1e-3, weight_decay=0.1,
                         param_groups=(("last", lambda name, p: name.startswith("2."), 5e-2),))
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    by_lr = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(group["lr"], 0)
        by_lr[group["lr"]] += sum(p.numel() for p in group["params"])
    assert by_lr == {1e-3: 16 + 4 + 8, 5e-2: 8 + 2}
    decays = {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert decays == {(1e-3, 0.1), (1e-3, 0.0), (5e-2, 0.1), (5e-2, 0.0)}


def test_outcome_carries_the_loss_series(tiny_bert, separable):
    from llm_magics import api
    r = api.finetune(model=str(tiny_bert), data=separable[0].head(64), epochs=1, batch_size=16, train="head",
                     feature_cache=False)
    assert r.metrics["steps"] == 3  # 64 rows: 41 train rows → 3 batches
    assert "train_loss" in r.metrics


def test_testing_helpers_isolate_the_home(tmp_path):
    from llm_magics import settings
    before = settings.current().cache_dir
    with testing.isolated_home(tmp_path / "h") as current:
        assert str(current.cache_dir).startswith(str(tmp_path / "h"))
        with testing.shell_with_extension() as sh:
            assert "llm" in sh.magics_manager.magics["line"]
    assert settings.current().cache_dir == before


def test_tiny_models_reexport_the_public_builders():
    sys.path.insert(0, str(TESTS_DIR))
    import tiny_models
    assert tiny_models.build_bert is testing.build_bert


def test_models_have_no_import_circle():
    """gguf → loader → sources → gguf was one (lazy imports included)."""
    folder = PACKAGE / "models"
    graph = {p.stem: {n.rsplit(".", 1)[-1] for n in _imported_modules(p) if n.startswith("llm_magics.models.")}
             for p in folder.glob("*.py")}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in graph.get(start, ()))
    assert [m for m in graph if reaches(m, m)] == []


def test_the_hugging_face_hub_module_is_named_for_it():
    from llm_magics import hf_hub
    assert callable(hf_hub.reachable)
    assert not (PACKAGE / "hub.py").exists()  # llm_magics.adapters.session holds the adapters loaded now
