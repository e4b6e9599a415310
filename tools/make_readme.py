"""Write README.md from nbs/index.ipynb (nbdev-readme needs Quarto, which cannot be installed everywhere).

Markdown cells are copied; code cells become fenced blocks (nbdev directives removed, `#| hide` cells
skipped) followed by their text output. Run: python tools/make_readme.py [--check]
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def cell_text(c): return ''.join(c['source']) if isinstance(c['source'], list) else c['source']

def render(nb) -> str:
    out = []
    for c in nb['cells']:
        src = cell_text(c)
        if c['cell_type'] == 'markdown':
            out.append(src.strip())
            continue
        lines = src.splitlines()
        directives = [l for l in lines if l.startswith('#|')]
        if any(re.match(r'#\|\s*(hide|exporti?|eval:\s*false)\b', l) for l in directives) and not any('echo: true' in l for l in directives):
            continue
        code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if code: out.append(f"```python\n{code}\n```")
        for o in c.get('outputs', []):
            text = o.get('text') or o.get('data', {}).get('text/plain')
            if text: out.append("```\n" + (''.join(text) if isinstance(text, list) else text).rstrip() + "\n```")
    return '\n\n'.join(out) + '\n'

def main():
    readme = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n"
    readme += render(json.loads((ROOT/'nbs'/'index.ipynb').read_text()))
    path = ROOT/'README.md'
    if '--check' in sys.argv:
        if not path.exists() or path.read_text() != readme: sys.exit("README.md is out of date: run python tools/make_readme.py")
        return
    path.write_text(readme)

if __name__ == '__main__': main()
