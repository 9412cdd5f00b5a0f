"""The layering, checked from the source so it cannot drift back (README, Architecture):

    api/ and the CLI -> service -> deployments -> flows -> tasks -> storage -> floor

Every import of the project's own modules is read with ``ast`` (those under
``TYPE_CHECKING`` and inside functions too) and placed on the layer of the module it names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ingestflow", "storage", "tasks", "flows", "deployments", "api")
# Layer of a module, by its longest matching prefix; a module imports only its own layer or
# lower ones.
LAYERS = {
    "ingestflow.core": 0,
    "storage": 1,
    "tasks": 2,
    "flows": 3,
    "deployments": 4,
    "ingestflow.service": 5,
    "ingestflow.cli": 6,
    "ingestflow": 6,  # the package itself: the notebook front door
    "api": 6,
}
MAX_DEFERRED_IMPORTS = 20


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    deferred: bool  # inside a function

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported}"


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _own(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in PACKAGES  # type: ignore[union-attr]


def project_imports() -> Iterator[Import]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            module = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            deferred = {
                id(node)
                for fn in ast.walk(tree)
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                for node in ast.walk(fn)
            }
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and _own(node.module):
                    assert node.module is not None
                    # `from pkg import sub` names the submodule when there is one.
                    names = [
                        f"{node.module}.{a.name}"
                        if (REPO / node.module.replace(".", "/") / f"{a.name}.py").exists()
                        or (REPO / node.module.replace(".", "/") / a.name).is_dir()
                        else node.module
                        for a in node.names
                    ]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names if _own(a.name)]
                for name in names:
                    yield Import(module, name, node.lineno, id(node) in deferred)


IMPORTS = list(project_imports())


def test_the_imports_are_read() -> None:
    importers = {i.importer.split(".")[0] for i in IMPORTS}
    assert importers == set(PACKAGES)
    assert len(IMPORTS) > 200


def test_the_floor_imports_nothing_of_the_project() -> None:
    wrong = [i for i in IMPORTS if layer(i.importer) == 0 and layer(i.imported) != 0]
    assert not wrong, "\n".join(map(str, wrong))


def test_nothing_imports_the_api() -> None:
    wrong = [
        i
        for i in IMPORTS
        if i.imported.split(".")[0] == "api" and i.importer.split(".")[0] != "api"
    ]
    assert not wrong, "\n".join(map(str, wrong))


def test_no_module_imports_a_layer_above_its_own() -> None:
    wrong = [i for i in IMPORTS if layer(i.imported) > layer(i.importer)]
    assert not wrong, "\n".join(map(str, wrong))


@pytest.mark.parametrize("lower", ["tasks", "flows", "deployments", "ingestflow.service"])
def test_storage_imports_no_layer_above_it(lower: str) -> None:
    wrong = [
        i
        for i in IMPORTS
        if i.importer.startswith("storage") and (i.imported + ".").startswith(lower + ".")
    ]
    assert not wrong, "\n".join(map(str, wrong))


def test_the_api_calls_only_the_service_and_the_floor() -> None:
    allowed = ("api", "ingestflow.service", "ingestflow.core")
    wrong = [
        i
        for i in IMPORTS
        if i.importer.startswith("api")
        and i.imported != "ingestflow"  # the version
        and not any(i.imported == a or i.imported.startswith(a + ".") for a in allowed)
    ]
    assert not wrong, "\n".join(map(str, wrong))


def test_few_imports_of_the_project_hide_inside_functions() -> None:
    deferred = [i for i in IMPORTS if i.deferred]
    assert len(deferred) <= MAX_DEFERRED_IMPORTS, "\n".join(map(str, deferred))


def test_layer_placement() -> None:
    assert layer("ingestflow.core.settings") == 0
    assert layer("ingestflow.service.jobs") == 5
    assert layer("ingestflow.cli.up") == 6
    assert layer("ingestflow") == 6
    assert layer("storage.stores.s3") == 1
