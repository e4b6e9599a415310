"The notebooks are the source: exporting them again must not change `llm_nb/`, and README.md must match index.ipynb."
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_package_matches_notebooks(tmp_path):
    for p in ('nbs', 'llm_nb'): shutil.copytree(ROOT/p, tmp_path/p, ignore=shutil.ignore_patterns('__pycache__', '_proc', '.ipynb_checkpoints'))
    shutil.copy(ROOT/'pyproject.toml', tmp_path)
    r = subprocess.run(['nbdev-export'], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmp = filecmp.dircmp(ROOT/'llm_nb', tmp_path/'llm_nb', ignore=['__pycache__'])
    assert not (cmp.diff_files or cmp.left_only or cmp.right_only), \
        f"llm_nb/ is out of step with nbs/ ({cmp.diff_files + cmp.left_only + cmp.right_only}): run nbdev-export and commit"

def test_readme_matches_index():
    r = subprocess.run([sys.executable, 'tools/make_readme.py', '--check'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_ci_runs_the_readme_test_command():
    readme = (ROOT/'README.md').read_text()
    block = readme.split('**Test**', 1)[1].split('```bash\n', 1)[1].split('\n```', 1)[0].strip()
    assert (ROOT/'.ci'/'run').read_text().strip().splitlines()[-1] == block
