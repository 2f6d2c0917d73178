"""The house rules of docs/ARCHITECTURE.md, checked on the source: layers, sizes, no private names."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
ANALYSIS = REPO / "analysis"  # the top-level package that reads finished runs back (`svbench report` calls it)
# a package may import from its own layer and the ones before it; ``analysis`` sits above the engine, under the CLI
LAYERS = ["base", "data|models|energy", "training", "eval", "tracking", "orchestration", "analysis", "cli"]
# optional back ends loaded only when configured (Zeus, a node power command)
LAZY_OK = {("bench.energy.meters", "bench.energy.node_meter"), ("bench.energy.meters", "bench.energy.zeus_meter")}


def _modules():
    for path in sorted([*BENCH.rglob("*.py"), *ANALYSIS.rglob("*.py")]):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        yield name, path, ast.parse(path.read_text())


def _layer(module: str) -> int:
    """The layer of ``bench.<package>...`` or of ``analysis``; top-level modules (``bench.config``) are the base."""
    parts = module.split(".")
    if parts[0] == "analysis":
        return LAYERS.index("analysis")
    package = parts[1] if len(parts) > 1 and (BENCH / parts[1]).is_dir() else "base"
    return next((i for i, names in enumerate(LAYERS) if package in names.split("|")), 0)


def _bench_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("bench", "analysis"):
            yield node


def test_layers_import_only_the_layers_before_them():
    wrong = []
    for name, _, tree in _modules():
        if name == "bench.__main__":  # ``python -m bench``: the command line
            continue
        for node in _bench_imports(tree):
            targets = [node.module] if node.module != "bench" else [f"bench.{a.name}" for a in node.names]
            wrong += [f"{name} imports {t}" for t in targets if _layer(t) > _layer(name)]
            if name.startswith("bench.") and not name.startswith("bench.cli") and node.module.startswith("analysis"):
                wrong.append(f"{name} imports {node.module} (only the command line may)")
    assert not wrong, wrong


def test_no_function_local_imports_of_our_modules_outside_the_command_line():
    local = []
    for name, _, tree in _modules():
        if name.startswith("bench.cli"):
            continue  # commands load torch, MLflow and Optuna only when they run (fast --help and errors)
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in _bench_imports(fn):
                if (name, node.module) not in LAZY_OK:
                    local.append(f"{name}.{fn.name} imports {node.module}")
    assert not local, local


def test_no_private_names_across_modules_or_of_other_libraries():
    found = []
    for path in sorted([*BENCH.rglob("*.py"), *ANALYSIS.rglob("*.py"), *(REPO / "tests").glob("*.py"),
                        *(REPO / "benchmarks").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and a.name != "__version__"]
                if node.module and any(p.startswith("_") and p != "__future__" for p in node.module.split(".")):
                    found.append(f"{path.name}: from {node.module}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, found


def test_sizes_modules_400_functions_80_lines_120():
    over = []
    for name, path, tree in _modules():
        lines = path.read_text().splitlines()
        if len(lines) > 400:
            over.append(f"{name}: {len(lines)} lines")
        over += [f"{name}:{i}: {len(ln)} characters" for i, ln in enumerate(lines, 1) if len(ln) > 120]
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            if fn.end_lineno - fn.lineno + 1 > 80:
                over.append(f"{name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines")
    assert not over, over


def test_the_command_line_answers_help_and_one_line_errors_without_torch_or_mlflow():
    """``svbench --help`` and argument errors load no heavy library (0.3 s instead of 5 s a call): the command
    modules import ours inside their handlers, so that nothing at the top of ``bench.cli`` pulls torch in."""
    import subprocess
    import sys

    code = ("import sys; from bench.cli.main import main\n"
            "try:\n    main(['train', '--no-such-option'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'mlflow', 'pandas', 'zeus') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_docs_the_code_names_ship_with_it():
    """A docstring or preset that names a page (an upper-case .md name) names one of the project's own: README.md or
    docs/*.md, never a file that does not ship."""
    import re

    pages = {p.name for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")]}
    named = set()
    for path in [*BENCH.rglob("*.py"), *BENCH.rglob("*.yaml"), *ANALYSIS.rglob("*.py"), *(REPO / "tests").glob("*.py")]:
        named |= {(path.name, m) for m in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", path.read_text())}
    assert not [(f, m) for f, m in named if m not in pages]


def test_ruff_finds_nothing():
    """The lint of pyproject.toml's [tool.ruff] (pyflakes, syntax, line length) over the code and the tests."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is a test dependency (pyproject.toml [test]); reinstall with make install"
    proc = subprocess.run([ruff, "check", "--output-format", "concise", "bench", "analysis", "tests"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_no_two_modules_share_a_name_outside_the_command_line():
    """One name, one module: ``bench/cli/<command>.py`` may share its command's name, nothing else may."""
    from collections import Counter

    names = Counter(p.name for p in [*BENCH.rglob("*.py"), *ANALYSIS.rglob("*.py")]
                    if p.name != "__init__.py" and p.parent.name != "cli")
    assert [n for n, c in names.items() if c > 1] == []
