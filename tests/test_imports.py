"""The package's import graph runs one way: tables (number and table formatting, importing nothing of the package) and data (with device: where a run executes) → model → config → store → train → scores → sweep → experiment → phase, with the
TransformerLens interop beside the scores, the argument chapters (zoo; smeared, ablation, circuits and scale; then examples) after the phase change, and the site (its pages,
then the build) and CLI on top. Run this file to print the graph."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]/'induction_nb'
LAYERS = {'tables': 0, 'data': 0, 'device': 0, 'model': 1, 'config': 2, 'store': 3, 'train': 4, 'scores': 3, 'interop': 3,
          'sweep': 4, 'experiment': 5, 'phase': 6,
          'zoo': 7, 'smeared': 8, 'ablation': 8, 'circuits': 8, 'scale': 8, 'examples': 9,   # the argument chapters
          'pages': 9, 'site': 10, 'cli': 11}

def import_graph() -> dict[str, set[str]]:
    "`{module: the package modules it imports}`, from every import statement (module level or inside functions)."
    graph = {}
    for f in sorted(PKG.glob('*.py')):
        if f.stem.startswith('_'): continue
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ''
                if node.level: deps.add(mod.split('.')[0] if mod else '')
                elif mod.startswith('induction_nb.'): deps.add(mod.split('.')[1])
                elif mod == 'induction_nb': deps.update(a.name for a in node.names if (PKG/f'{a.name}.py').exists())
            elif isinstance(node, ast.Import):
                deps.update(a.name.split('.')[1] for a in node.names if a.name.startswith('induction_nb.'))
        graph[f.stem] = {d for d in deps if d and d != f.stem}
    return graph

def test_every_module_has_a_layer():
    assert set(import_graph()) == set(LAYERS), "add the new module to LAYERS (and to the order in the docstring)"

def test_imports_only_go_down():
    "No cycle and no upward import: every module imports only modules of a lower layer."
    bad = [f"{m} imports {d}" for m, deps in import_graph().items() for d in deps if LAYERS[d] >= LAYERS[m]]
    assert not bad, "upward or sideways imports: " + "; ".join(bad)

def test_the_check_can_fail(tmp_path, monkeypatch):
    "An upward import is caught (a scratch copy of the package with one added)."
    import shutil
    pkg = tmp_path/'induction_nb'; shutil.copytree(PKG, pkg)
    (pkg/'data.py').write_text((pkg/'data.py').read_text() + "\nfrom .phase import phase_change\n")
    monkeypatch.setattr(__import__(__name__), 'PKG', pkg)
    assert 'phase' in import_graph()['data']
    try: test_imports_only_go_down()
    except AssertionError as e: assert 'data imports phase' in str(e)
    else: raise AssertionError("the upward import data → phase was not caught")

if __name__ == '__main__':
    for m, deps in sorted(import_graph().items(), key=lambda kv: LAYERS[kv[0]]):
        print(f"{m:>10} ← {', '.join(sorted(deps, key=LAYERS.get)) or '(nothing from the package)'}")
