"""The code's shape: short functions, and scripts that are entry points only (read with ast, not run)."""
import ast
from pathlib import Path

from conftest import REPO

SCRIPTS = ("train", "sample", "evaluate", "preprocess", "plot", "serve")
MAX_FUNCTION_LINES = 60


def project_files() -> list[Path]:
    """The scripts and every module of util/, model/ and bench/ (tests/ excluded)."""
    root = Path(REPO)
    files = [root / f"{script}.py" for script in SCRIPTS]
    for folder in ("util", "model", "bench"):
        files += sorted((root / folder).rglob("*.py"))
    return files


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method, nested ones included, with its qualified name (Class.method, outer.inner)."""
    found: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((prefix + node.name, node))
            found += functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            found += functions(node, f"{prefix}{node.name}.")
        else:
            found += functions(node, prefix)
    return found


def length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from `def` to the last line of the body: decorators are not counted, the docstring and
    comments and blank lines inside are (a nested function counts in itself and in its parent)."""
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_60_lines():
    offenders = [f"{relative(path)}:{node.lineno} {name} ({length(node)} lines)"
                 for path in project_files() for name, node in functions(parse(path))
                 if length(node) > MAX_FUNCTION_LINES]
    assert not offenders, (f"functions longer than {MAX_FUNCTION_LINES} lines (split them):\n  "
                           + "\n  ".join(offenders))


def import_call_name(node: ast.AST) -> str | None:
    """The constant name of importlib.import_module("name"), import_module("name") or __import__("name")."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    if isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"):
        return node.args[0].value
    if isinstance(node.func, ast.Attribute) and node.func.attr == "import_module":
        return node.args[0].value
    return None


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module name) of each absolute import, at any depth (inside functions too),
    and of each import call with a constant name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and (name := import_call_name(node)):
            found.append((node.lineno, name.split(".")[0]))
    return found


def test_no_script_is_imported_by_project_code():
    """What scripts share lives in util/ or model/: a script imported runs its module code and ties
    one entry point's internals to another's (tests may import scripts; nothing else does)."""
    offenders = [f"{relative(path)}:{line} imports {module}"
                 for path in project_files() for line, module in imported_modules(parse(path))
                 if module in SCRIPTS]
    assert not offenders, ("scripts imported by project code (move what they share to util/ or model/):\n  "
                           + "\n  ".join(offenders))


def test_the_checks_see_the_code():
    """The two checks above find what they look for (a guard against checking nothing)."""
    sample = ast.parse("import train\nfrom evaluate import x\nimport util.data\nfrom . import y\n"
                       "def f():\n    import sample as s\n    importlib.import_module('preprocess.z')\n"
                       "class C:\n    @staticmethod\n    def m():\n        def inner():\n            pass\n")
    assert sorted(m for _, m in imported_modules(sample)) == ["evaluate", "preprocess", "sample", "train", "util"]
    assert [(name, length(node)) for name, node in functions(sample)] == [
        ("f", 3), ("C.m", 3), ("C.m.inner", 2)]
    names = {relative(path) for path in project_files()}
    assert {"train.py", "util/options.py", "model/char_rnn.py", "bench/sample_speed.py"} <= names
