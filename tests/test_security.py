"Checkpoints never run pickled code, and no secret from the environment reaches a saved file."
import json, os, pickle
from pathlib import Path
import pytest, torch
from llm_nb.cli import train
from llm_nb.config import load_config
from llm_nb.checkpoint import load_checkpoint, CheckpointError, _sha256
from helpers import tiny_corpus, tiny_overrides

SECRETS = {'WANDB_API_KEY': 'wandb-secret-4f9a1c', 'LLM_NB_SMTP_PASSWORD': 'smtp-secret-77b2e0', 'HF_TOKEN': 'hf_secret_c0ffee'}

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('sec')
    data = tiny_corpus(tmp/'docs', n=4)
    old = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    try: learn = train(load_config(None, tiny_overrides(tmp/'out', data, steps=4, **{'training.save_steps': 2, 'logging.report_to': '[tensorboard, jsonl]'})))
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return tmp, learn

def test_no_secret_in_any_saved_file(run):
    tmp, _ = run
    files = [f for f in (tmp/'out').rglob('*') if f.is_file()]
    assert len(files) > 20
    for f in files:
        data = f.read_bytes()
        for s in SECRETS.values(): assert s.encode() not in data, f'{s} leaked into {f}'

class Payload:
    def __reduce__(self): return (os.system, (f'touch {Path(os.environ["LLM_NB_PWNED"])}',))

def test_pickle_payload_is_refused(run, tmp_path):
    tmp, learn = run
    ck = tmp/'out'/'checkpoints'/'step-4'
    os.environ['LLM_NB_PWNED'] = str(tmp_path/'pwned')
    with open(ck/'optimizer.pt', 'wb') as f: pickle.dump({'state': Payload()}, f)
    manifest = json.loads((ck/'manifest.json').read_text())   # an attacker can fix the manifest too
    manifest['optimizer.pt'] = dict(size=(ck/'optimizer.pt').stat().st_size, sha256=_sha256(ck/'optimizer.pt'))
    (ck/'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match='optimizer.pt: refusing to load'): load_checkpoint(learn, ck)
    assert not (tmp_path/'pwned').exists()
