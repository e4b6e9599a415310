"""One `pytest` run covers the notebooks and the tests in `tests/`. Each notebook is a test run by nbdev's own `test_nb`,
chosen and configured as `nbdev-test` does it: the notebooks `nbglob` finds (names starting with `_` or `.` skipped, none
beside a `.notest` file), cells flagged with `tst_flags` skipped (`--nbdev-flags` runs them, as `nbdev-test --flags`),
`cell_timeout` and `test_setup` from `[tool.nbdev]`."""
import os, signal, tempfile
from functools import cache
from pathlib import Path
import pytest

# Tokenised-data cache of this test session: never the user's ~/.cache.
os.environ.setdefault('LLM_NB_CACHE', tempfile.mkdtemp(prefix='llm_nb-cache-'))
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

@cache
def _nbdev():
    "nbdev's settings and the notebooks `nbdev-test` would test."
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    cfg = get_config(Path(__file__).parent)
    files = {p.resolve() for p in nbglob(cfg.nbs_path, as_path=True) if not (p.parent/'.notest').exists()}
    flags = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags)
    return cfg, files, flags

def pytest_collect_file(parent, file_path):
    if file_path.suffix == '.ipynb' and file_path.resolve() in _nbdev()[1]:
        return NotebookFile.from_parent(parent, path=file_path)

class NotebookFile(pytest.File):
    def collect(self): yield NotebookItem.from_parent(self, name=self.path.stem)

class NotebookItem(pytest.Item):
    def runtest(self):
        from nbdev.test import test_nb
        cfg, _, flags = _nbdev()
        sigint = signal.getsignal(signal.SIGINT)       # test_nb installs its own handler; give pytest's back afterwards
        try: ok, _ = test_nb(self.path, skip_flags=flags, force_flags=self.config.getoption('--nbdev-flags').split(),
                             basepath=cfg.config_path, cell_timeout=cfg.cell_timeout or None, cell_timing_min=cfg.get('cell_timing_min'))
        finally: signal.signal(signal.SIGINT, sigint)
        if not ok: raise NotebookFailure(self.path.name)
    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, NotebookFailure): return f"{self.path.name} failed: its traceback is printed above (stderr)"
        return super().repr_failure(excinfo)
    def reportinfo(self): return self.path, 0, f"notebook {self.path.name}"

class NotebookFailure(Exception): pass

def pytest_collection_finish(session):
    "nbdev-test's `test_setup` hook (`module:function` in `[tool.nbdev]`) gets every cell it will run, before the first notebook."
    cfg, _, flags = _nbdev()
    items = [i for i in session.items if isinstance(i, NotebookItem)]
    if not (cfg.get('test_setup') and items): return
    from fastcore.xtras import working_directory
    from nbdev.config import import_obj
    from nbdev.test import nb_test_cells
    force = session.config.getoption('--nbdev-flags').split()
    with working_directory(cfg.nbs_path):
        import_obj(cfg.test_setup)([c for i in items for c in nb_test_cells(i.path, flags, force)])

def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', help='also run tests marked slow (real pretrained models, multi-process launches)')
    parser.addoption('--nbdev-flags', default='', help="notebook cells flagged with these tst_flags run too (nbdev-test's --flags), e.g. 'slow'")

def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU; skipped without one')

def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: run with --runslow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
