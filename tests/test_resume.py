"""A run killed with SIGKILL at arbitrary steps and resumed from its last checkpoint is indistinguishable from
one never stopped: the same logged losses at every step and bit-identical final weights. Mid-epoch, across an
epoch boundary, with gradient accumulation and dropout, and with data-loader worker processes (whose batches are
those of the main process: the uninterrupted reference runs without workers)."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from llm_nb.cli import train
from llm_nb.config import load_config
from helpers import tiny_corpus, tiny_overrides

STEPS = 30
def overrides(out, data, **kw):
    # 4 speeches → 3 for training → 50 batches of 16 → 25 steps per epoch with accumulation 2: the run crosses an epoch boundary
    return tiny_overrides(out, data, steps=STEPS, **{'model.dropout': 0.1, 'training.gradient_accumulation_steps': 2,
                          'training.save_steps': 3, 'training.logging_steps': 2, 'training.eval_steps': 15,
                          'training.save_total_limit': 2, 'logging.report_to': '[none]', **kw})

def losses(hist): return [(r['step'], r.get('loss'), r.get('eval_loss')) for r in hist]

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ref')
    data = tiny_corpus(tmp/'docs', n=4)
    learn = train(load_config(None, overrides(tmp/'out', data)))
    assert learn.state.epoch >= 1, 'the reference run must cross an epoch boundary'
    return data, tmp/'out'

def _logged_step(out):
    try: return json.loads((out/'loss_history.json').read_text())[-1]['step']
    except Exception: return 0

WORKERS = {'training.dataloader_num_workers': 2}

@pytest.mark.parametrize('kill_at,extra', [(5, {}), (13, {}), (27, {}), (20, WORKERS)], ids=['5', '13', '27', '20-workers'])
def test_sigkill_and_resume_is_bit_exact(reference, tmp_path, kill_at, extra):
    data, ref = reference
    out = tmp_path/'out'
    p = subprocess.Popen([sys.executable, '-m', 'llm_nb', 'train', *overrides(out, data, **extra)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    deadline = time.time() + 300
    while _logged_step(out) < kill_at and p.poll() is None and time.time() < deadline: time.sleep(0.05)
    assert p.poll() is None, f'the run ended before step {kill_at}: {p.stderr.read()[-2000:]}'
    os.killpg(p.pid, signal.SIGKILL); p.wait()   # the whole job, data-loader workers included, as a scheduler kills it
    assert not (out/'final').exists()
    learn = train(load_config(None, overrides(out, data, **extra, **{'training.resume_from': 'latest'})))
    assert learn.state.step == STEPS
    n = extra.get('training.dataloader_num_workers', 0)
    assert (learn.train_dl.num_workers, learn.train_dl.persistent_workers, learn.valid_dl.num_workers) == (n, n > 0, n)
    ref_hist = json.loads((ref/'loss_history.json').read_text())
    new_hist = json.loads((out/'loss_history.json').read_text())
    assert losses(new_hist) == losses(ref_hist)
    a, b = load_file(ref/'final'/'model.safetensors'), load_file(out/'final'/'model.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(p.name for p in (out/'checkpoints').iterdir())
    assert len([k for k in kept if k.startswith(('step-', 'epoch-'))]) <= 2, kept
