"""The shape of the code base: no import circles, layers that import only downwards, public names only.

Read with ``ast`` (nothing is imported), so the test is fast and checks every module, commands included.
"""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

CODE_DIR = Path(__file__).resolve().parents[1] / "RD4AD-main"
REPO_ROOT = CODE_DIR.parent
MODULES = {path.stem: path for path in CODE_DIR.glob("*.py")}
COMMANDS = {"main", "summary", "bench", "demo", "workflow", "launch", "predict", "tune", "analyse"}
MODEL_MODULES = {"resnet", "de_resnet", "RD_ConvNeXt_Model", "rd_model", "backbones", "weights", "capacity", "rdpp",
                 "simplex_noise"}
TRAINING_AND_REPORTING = {"train", "recipe", "sweep", "evaluate", "report", "report_tables", "claims", "decision",
                          "comparison", "plots", "runs", "checkpoint", "distributed", "metrics", "significance",
                          *COMMANDS}


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))


def project_imports(name: str) -> dict[str, set[str]]:
    """Project modules imported by ``name`` (anywhere in it, also inside functions) -> names taken from each."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in MODULES:
            found.setdefault(node.module, set()).update(alias.name for alias in node.names)
    found.pop(name, None)
    return found


GRAPH = {name: project_imports(name) for name in MODULES}


def test_no_import_circle():
    visiting, done, circles = [], set(), []

    def visit(name: str) -> None:
        if name in visiting:
            circles.append(visiting[visiting.index(name):] + [name])
            return
        if name in done:
            return
        visiting.append(name)
        for dependency in GRAPH[name]:
            visit(dependency)
        visiting.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)
    assert not circles, " ; ".join(" -> ".join(circle) for circle in circles)


def test_the_circle_check_finds_a_circle(monkeypatch):
    """The check above would see a circle (guards against a walk that never looks)."""
    graph = {"a": {"b": set()}, "b": {"a": set()}}
    monkeypatch.setitem(GRAPH, "a", graph["a"])
    monkeypatch.setitem(GRAPH, "b", graph["b"])
    with pytest.raises(AssertionError, match="a -> b -> a|b -> a -> b"):
        test_no_import_circle()


@pytest.mark.parametrize("name", ["evaluate", "bench", "launch", "workflow"])
def test_run_code_does_not_reach_into_the_training_loop(name):
    assert "train" not in GRAPH[name]


def test_nothing_below_the_commands_imports_a_command():
    offenders = {name: sorted(set(GRAPH[name]) & COMMANDS) for name in MODULES if name not in COMMANDS}
    assert not {name: hits for name, hits in offenders.items() if hits}


def test_models_import_no_training_or_reporting_and_metrics_no_model():
    for name in MODEL_MODULES:
        assert not set(GRAPH[name]) & TRAINING_AND_REPORTING, name
    for name in ("metrics", "significance", "reference_metrics"):
        assert not set(GRAPH[name]) & (MODEL_MODULES | TRAINING_AND_REPORTING - {"metrics"}), name


def test_no_private_name_is_imported_across_modules():
    private = {name: sorted(n for names in GRAPH[name].values() for n in names if n.startswith("_"))
               for name in MODULES}
    assert not {name: names for name, names in private.items() if names}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_declares_its_public_names(name):
    tree = _tree(name)
    declared = [node for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
    assert declared, f"{name}.py has no __all__"
    names = ast.literal_eval(declared[0].value)
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    targets = [t for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    defined |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    defined |= {alias.asname or alias.name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert not set(names) - defined, f"{name}.__all__ names what it does not define: {set(names) - defined}"


def test_the_training_loop_stays_small():
    assert len(MODULES["train"].read_text(encoding="utf-8").splitlines()) < 400


def test_no_reference_to_a_document_outside_the_repository():
    briefing = "RD4AD" + "_FACTS"  # spelled apart so that this file does not match itself
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    hits = [path for path in tracked.split() if (REPO_ROOT / path).is_file()
            and briefing in (REPO_ROOT / path).read_text(encoding="utf-8", errors="ignore")]
    assert hits == []
    assert (REPO_ROOT / "docs" / "reproduction.md").is_file()


# The modules that read results files (and render them): none may reach model code, even through another module.
RESULTS_READERS = {"runs", "atomic_files", "comparison", "decision", "significance", "report", "report_tables",
                   "claims", "plots", "documents", "why", "backbone_facts", "why_part", "why_stats", "why_scales",
                   "why_regions", "why_stability", "why_locality", "why_audit", "why_files", "protocol",
                   "report_kinds", "inference", "planning", "calibration", "calibration_table",
                   "calibration_images", "why_calibration", "paired_metrics", "image_inference", "per_image",
                   "resample_metrics"}


def _reachable(name: str) -> set[str]:
    seen, stack = set(), [name]
    while stack:
        for dependency in GRAPH[stack.pop()]:
            if dependency not in seen:
                seen.add(dependency)
                stack.append(dependency)
    return seen


@pytest.mark.parametrize("name", sorted(RESULTS_READERS))
def test_results_readers_reach_no_model_code(name):
    assert not _reachable(name) & MODEL_MODULES, f"{name} reaches {sorted(_reachable(name) & MODEL_MODULES)}"


def test_the_backbone_facts_import_nothing_and_the_registry_uses_them():
    imports = [node for node in ast.walk(_tree("backbone_facts")) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [node.module for node in imports if isinstance(node, ast.ImportFrom)] == ["__future__"]
    assert [node for node in imports if isinstance(node, ast.Import)] == []
    assert "backbone_facts" in GRAPH["backbones"] and "backbones" not in _reachable("comparison")
    assert {"FAMILIES"} <= GRAPH["backbones"]["backbone_facts"]


def test_the_reachability_check_sees_a_model_module(monkeypatch):
    monkeypatch.setitem(GRAPH, "report_tables", {**GRAPH["report_tables"], "backbones": set()})
    with pytest.raises(AssertionError, match="backbones"):
        test_results_readers_reach_no_model_code("report")
