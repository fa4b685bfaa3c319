"""Committed result tables named the machine path of the run they came from (`run_dir` in `info.json`, `run` in the
ablation benchmark's `bench.json`; issue 21): rewrite each as the run's name under the runs folder, changing nothing
else in the file.

    python tools/strip_run_paths.py [nbs/results]
"""
import json, re, sys
from pathlib import Path

KEYS = {'info.json': 'run_dir', 'bench.json': 'run'}

def strip(path: Path) -> bool:
    "Rewrite the run path in the JSON file at `path` (`KEYS`) as a bare name; True if the file changed."
    key, text = KEYS[path.name], path.read_text()
    new = re.sub(rf'("{key}":\s*)"([^"]*)"', lambda m: m[1] + json.dumps(Path(m[2]).name), text)
    if new == text: return False
    a, b = json.loads(text), json.loads(new)
    assert {**a, key: None} == {**b, key: None} and b[key] == Path(a[key]).name, path
    path.write_text(new)
    return True

if __name__ == '__main__':
    root = Path(sys.argv[1] if len(sys.argv) > 1 else 'nbs/results')
    changed = [p for name in KEYS for p in sorted(root.rglob(name)) if strip(p)]
    print(f"{len(changed)} file(s) rewritten under {root}: {[str(p) for p in changed]}")
