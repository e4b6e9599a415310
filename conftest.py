"""One `pytest` run covers the notebooks (each executed through nbdev's `test_nb`, honouring `tst_flags`)
and the tests in `tests/`."""
import os, sys, tempfile
from pathlib import Path
import pytest

# tools/build_docs.py runs notebooks exactly as nbdev's test_nb does and keeps the executed copies, so the docs test
# (tests/test_docs.py) renders these runs instead of executing every notebook a second time.
sys.path.insert(0, str(Path(__file__).parent/'tools'))

# Tokenised-data cache of this test session: never the user's ~/.cache.
os.environ.setdefault('LLM_NB_CACHE', tempfile.mkdtemp(prefix='llm_nb-cache-'))
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

def pytest_collect_file(parent, file_path):
    if file_path.suffix == '.ipynb' and file_path.parent.name == 'nbs' and not file_path.name.startswith(('_', '.')):
        return NotebookFile.from_parent(parent, path=file_path)

class NotebookFile(pytest.File):
    def collect(self): yield NotebookItem.from_parent(self, name=self.path.stem)

class NotebookItem(pytest.Item):
    def runtest(self):
        from build_docs import run_notebook
        if not run_notebook(self.path): raise NotebookFailure(self.path.name)
    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, NotebookFailure): return f"{self.path.name} failed: its traceback is printed above (stderr)"
        return super().repr_failure(excinfo)
    def reportinfo(self): return self.path, 0, f"notebook {self.path.name}"

class NotebookFailure(Exception): pass

def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', help='also run tests marked slow (real pretrained models, multi-process launches)')

def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU; skipped without one')

def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: run with --runslow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
