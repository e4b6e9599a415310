"Faulty inputs from the command line: text that is not UTF-8, pickle-only model folders, prompts longer than the context; nothing saved is changed."
import hashlib, json
from pathlib import Path
import pytest, torch
from llm_nb.cli import main
from llm_nb.testing import tiny_gpt2
from helpers import tiny_corpus, tiny_overrides, run_cli

def exit_message(argv) -> str:
    with pytest.raises(SystemExit) as e: main(argv)
    return str(e.value.code)

def hashes(*paths) -> dict:
    "sha256 of every file at or under `paths`."
    files = [f for p in map(Path, paths) for f in ([p] if p.is_file() else sorted(p.rglob('*'))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

def unchanged(before:dict) -> bool:
    "Whether every file hashed in `before` is still there with the same content (new files, such as a lock, may appear)."
    return {f: hashes(f).get(f) for f in before} == before

@pytest.fixture
def out(tmp_path):
    "An output folder that already holds the user's own files, which a failed run must leave as they were."
    out = tmp_path/'out'; (out/'notes').mkdir(parents=True)
    (out/'notes'/'plan.md').write_text('# what this run is for\n'); (out/'weights.bin').write_bytes(bytes(range(256)) * 4)
    return out

@pytest.mark.parametrize('name, content', [
    ('d.txt', b'First paragraph.\n\nSecond caf\xe9 one,\nstill second.\n'),
    ('d.jsonl', b'{"text": "one"}\n{"text": "two"}\n{"text": "caf\xe9"}\n')])
def test_data_not_utf8_names_file_and_line(tmp_path, out, name, content):
    f = tmp_path/name; f.write_bytes(content)   # a Latin-1 byte on line 3
    before = hashes(f, out)
    msg = exit_message(['train', f'data.train_file={f}', f'output_dir={out}'])
    assert f'{f}, line 3: not UTF-8 text (byte 0xe9' in msg and 're-encode the file as UTF-8' in msg
    assert unchanged(before) and not (out/'final').exists()

def test_data_folder_not_utf8_names_the_file(tmp_path):
    d = tmp_path/'docs'; d.mkdir(); (d/'a.txt').write_text('fine'); (d/'b.txt').write_bytes(b'ok\n\xff\n')
    assert f"{d/'b.txt'}, line 2: not UTF-8 text (byte 0xff" in exit_message(['train', f'data.train_file={d}'])

@pytest.mark.parametrize('name', ['run.yaml', 'run.json'])
def test_config_not_utf8_names_file_and_line(tmp_path, out, name):
    c = tmp_path/name
    c.write_bytes(b'training:\n  max_steps: 5\n  # r\xe9sum\xe9\n' if name.endswith('yaml') else b'{\n "seed": 1,\n "output_dir": "caf\xe9"\n}\n')
    before = hashes(c, out)
    assert f'{c}, line 3: not UTF-8 text (byte 0xe9' in exit_message(['train', '--config', str(c), f'output_dir={out}'])
    assert unchanged(before) and not (out/'final').exists()

def test_pickle_only_model_folder_refused(tmp_path, out):
    folder = tmp_path/'pickled'
    m = tiny_gpt2(1024, n_layer=1, n_positions=64, dropout=0.1)
    m.config.save_pretrained(folder); torch.save(m.state_dict(), folder/'pytorch_model.bin')   # what old transformers saved
    docs = tiny_corpus(tmp_path/'docs', n=2)
    before = hashes(folder, out)
    msg = exit_message(['train', *tiny_overrides(out, docs, steps=2, **{'model.name_or_path': folder})])
    assert msg.startswith('llm_nb train: error: ')
    assert f'{folder}: holds only pickle weights (pytorch_model.bin); llm_nb loads safetensors only' in msg
    assert 'UnpicklingError' not in msg and 'weights_only' not in msg
    assert unchanged(before) and not (out/'final').exists()

def test_samples_from_a_prompt_longer_than_the_context(tmp_path):
    docs = tiny_corpus(tmp_path/'docs', n=2)
    long = ' '.join(['We the People of the United States, in Order to form a more perfect Union'] * 12)   # well over 64 tokens
    before = hashes(docs)
    r = run_cli('train', *tiny_overrides(tmp_path/'out', docs, steps=4, **{'training.sample_prompts': json.dumps([long, 'The state of the Union']),
                'training.sample_every_steps': 2, 'training.sample_max_new_tokens': 100, 'training.eval_steps': 100}))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cut the prompt" in r.stderr and "to fit the model's context of 64 tokens" in r.stderr
    samples = [json.loads(l) for l in (tmp_path/'out'/'samples.jsonl').read_text().splitlines()]
    assert [(s['step'], s['prompt'][:5]) for s in samples] == [(2, 'We th'), (2, 'The s'), (4, 'We th'), (4, 'The s')]
    assert (tmp_path/'out'/'final'/'model.safetensors').exists()
    assert hashes(docs) == before
