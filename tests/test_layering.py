"""The import layering README's "Architecture" section shows: each layer imports only itself and layers below,
with no import circle, function-level imports included; and the light entry points stay light."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (layer, module-name prefixes), lowest first; the most specific prefix wins
LAYERS = [
    (0, ["modalities.base", "anyalign.sequences"]),                                    # contracts
    (1, ["anyalign.losses", "anyalign.loss_registry", "anyalign.losses_listwise", "anyalign.losses_conditional",
         "anyalign.logprobs", "modalities"]),                                           # pure functions, adapters
    (2, ["anyalign.data"]),                                                             # the training data flow
    (3, ["anyalign.model", "anyalign.attention", "anyalign.generation", "anyalign.families"]),
    (4, ["anyalign.reference", "anyalign.online"]),
    (5, ["anyalign.module", "anyalign.metrics", "anyalign.callbacks", "anyalign.export", "anyalign.checkpoint",
         "anyalign.curves"]),
    (6, ["anyalign.cli", "anyalign.__main__", "anyalign.commands", "anyalign.precompute", "anyalign.inspector", "anyalign.convert",
         "anyalign.predict", "anyalign.evaluate", "anyalign.evaluation",
         "anyalign"]),                                                                  # entry points
]


def layer_of(module: str) -> int:
    best = max(((len(p), layer) for layer, prefixes in LAYERS for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to README's Architecture"
    return best[1]


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted([*ROOT.glob("anyalign/**/*.py"), *ROOT.glob("modalities/**/*.py")]):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # the deepest project module the name refers to
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_no_import_goes_up_a_layer():
    bad = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
           for m, deps in graph().items() for d in sorted(deps)
           if layer_of(d) > layer_of(m) and not m.startswith(d + ".")]  # a package's own __init__ aside
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    g = graph()
    # a package __init__ that re-exports its submodules is part of them; drop those edges
    g = {m: {d for d in deps if not d.startswith(m + ".") and not m.startswith(d + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_every_module_has_a_layer():
    for m in modules():
        layer_of(m)


@pytest.mark.parametrize("module", ["anyalign.data.schema", "anyalign", "modalities", "modalities.image",
                                    "anyalign.convert"])
def test_light_imports(module):
    if not (ROOT / module.replace(".", "/")).exists() and not (ROOT / (module.replace(".", "/") + ".py")).exists():
        pytest.skip(f"{module} does not exist")
    code = (f"import sys, {module}; heavy = [m for m in ('lightning', 'transformers', 'librosa', 'decord', "
            f"'torchaudio', 'peft') if m in sys.modules]; print(heavy); assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
