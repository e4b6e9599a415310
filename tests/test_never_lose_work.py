"""Never lose work: each way a fault audit found to lose a finished run's results, or to crash a run midway, tried
from the command line as a user would. Each test asserts the message and that nothing saved before was changed."""
import hashlib, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from llm_nb.cli import main
from helpers import tiny_corpus, tiny_overrides, run_cli

def tree_hash(folder) -> dict:
    "sha256 of every file under `folder` (the lock file aside: it only says who ran last)."
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file() and p.name != '.llm_nb.lock'}

def args(out, data, steps=4, **kw):
    return tiny_overrides(out, data, steps=steps, **{'training.save_steps': 2, 'training.eval_steps': 100,
                                                     'logging.report_to': '[none]', **kw})

@pytest.fixture(scope='module')
def docs(tmp_path_factory): return tiny_corpus(tmp_path_factory.mktemp('docs'), n=4)

@pytest.fixture(scope='module')
def finished(tmp_path_factory, docs):
    "A finished 4-step run with checkpoints at steps 2 and 4 (tests copy it before touching it)."
    out = tmp_path_factory.mktemp('finished')/'out'
    r = run_cli('train', *args(out, docs), preexec_fn=lambda: os.umask(0o022))   # a umask under which 0600 files are a bug
    assert r.returncode == 0, r.stderr[-3000:]
    return out

@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path/'out'
    shutil.copytree(finished, out)
    return out

def failed(r) -> str:
    "The one-line error of a command refused in a subprocess (and no traceback)."
    assert r.returncode == 1, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    return r.stderr

def refused(*argv) -> str:
    "The error `llm_nb ARGV` exits with, run in this process (the command line's own entry point, without the start-up cost)."
    with pytest.raises(SystemExit) as e: main([str(a) for a in argv])
    assert isinstance(e.value.code, str), e.value.code
    return e.value.code

# 1. A second run into an existing output folder
def test_second_run_into_a_finished_folder_is_refused(run_copy, docs):
    before = tree_hash(run_copy)
    err = refused('train', *args(run_copy, docs, **{'model.d_model': 32}))
    assert (f"{run_copy} holds another run's results (final, best, checkpoints, training_config.json, loss_history.json); "
            "refusing to overwrite them") in err
    assert 'training.resume_from=latest' in err and 'new output_dir' in err and 'training.overwrite_output_dir=true' in err
    assert tree_hash(run_copy) == before

def test_overwrite_output_dir_starts_over(run_copy, docs, capsys):
    (run_copy/'notes.txt').write_text('the user keeps notes here')
    before = tree_hash(run_copy)   # a new config with a typo fails before anything of the old run is deleted
    err = refused('train', *args(run_copy, docs, **{'data.train_file': docs/'typo.txt', 'training.overwrite_output_dir': 'true'}))
    assert 'data file not found' in err and tree_hash(run_copy) == before
    main(['train', *args(run_copy, docs, steps=2, **{'model.d_model': 32, 'training.overwrite_output_dir': 'true'})])
    assert "training.overwrite_output_dir=true: deleted the previous run's final, best, checkpoints" in capsys.readouterr().out
    assert sorted(p.name for p in (run_copy/'checkpoints').iterdir()) == ['step-2']   # the old run's step-4 is gone
    assert json.loads((run_copy/'final'/'config.json').read_text())['n_embd'] == 32
    assert (run_copy/'notes.txt').read_text() == 'the user keeps notes here'               # not a run's output

def test_resume_latest_under_another_architecture_is_refused(run_copy, docs):
    before = tree_hash(run_copy)
    err = refused('train', *args(run_copy, docs, steps=6, **{'model.d_model': 32, 'tokenizer.vocab_size': 512,
                                                             'training.resume_from': 'latest'}))
    assert f"cannot resume {run_copy/'checkpoints'/'step-4'}: these settings differ" in err
    assert 'model.d_model: 64 → 32' in err and 'tokenizer.vocab_size: 1024 → 512' in err
    assert tree_hash(run_copy) == before
    # the same refusal in a notebook (the Python API) leaves the folder unlocked for the next try
    from llm_nb.cli import train
    from llm_nb.config import load_config
    from llm_nb.checkpoint import CheckpointError, OutputDirLock
    with pytest.raises(CheckpointError, match='model.d_model: 64 → 32'):
        train(load_config(None, args(run_copy, docs, steps=6, **{'model.d_model': 32, 'training.resume_from': 'latest'})))
    OutputDirLock(run_copy).acquire().release()

# 2. Two runs at once
def test_a_running_run_owns_its_folder_and_a_killed_one_leaves_no_lock(tmp_path, docs, capsys):
    out = tmp_path/'out'
    # with a DataLoader worker: a forked worker must not keep the lock of a killed run alive (only the main process is killed)
    a = subprocess.Popen([sys.executable, '-m', 'llm_nb', 'train', *args(out, docs, steps=100000, **{'training.save_steps': 3,
                                                                                                  'training.dataloader_num_workers': 1})],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((out/'checkpoints').glob('step-*')) and a.poll() is None and time.time() < deadline: time.sleep(0.2)
        assert a.poll() is None, a.stderr.read()[-3000:]
        before = (out/'training_config.json').read_bytes()
        err = refused('train', *args(out, docs, **{'training.resume_from': 'latest'}))   # flock: a second holder, even in this process, is refused
        assert f"{out} is in use by another run (pid {a.pid} on " in err and 'choose another output_dir' in err
        assert a.poll() is None                                     # the running run goes on
        assert (out/'training_config.json').read_bytes() == before    # the refused run wrote nothing (the running one rotates its own checkpoints)
    finally:
        a.kill(); a.wait()
    step = max(json.loads((p/'trainer_state.json').read_text())['state']['step'] for p in (out/'checkpoints').glob('step-*'))
    main(['train', *args(out, docs, steps=step + 2, **{'training.save_steps': 3, 'training.resume_from': 'latest'})])  # the dead run's lock went with it
    stdout = capsys.readouterr().out
    assert f'at step {step} ' in stdout and 'training.max_steps: 100000 → ' in stdout

# 4. Resume with a changed configuration
def test_resume_with_a_new_batch_size_continues_at_the_next_unseen_sample(run_copy, docs, capsys):
    # the finished run trained 4 steps of 16 blocks; from scratch at 8 blocks a step, one epoch is n // 8 steps (the last
    # partial batch is dropped), of which the 64 blocks already seen are 8: the resumed run ends the epoch at 4 + n // 8 - 8
    main(['train', *args(run_copy, docs, steps=-1, **{'training.per_device_train_batch_size': 8, 'training.resume_from': 'latest',
                                                     'training.learning_rate': 1e-3})])
    out = capsys.readouterr().out
    assert 'training.per_device_train_batch_size: 16 → 8' in out and 'training.learning_rate: 0.003 → 0.001' in out
    assert f"Resumed from {run_copy/'checkpoints'/'step-4'} at step 4 (sample 64 of epoch 0" in out
    n_blocks = int(out.split('Data: ')[1].split(' train blocks')[0])
    hist = json.loads((run_copy/'loss_history.json').read_text())
    assert hist[-1]['step'] == 4 + n_blocks // 8 - 8, (n_blocks, hist[-1])
    assert hist[-1]['learning_rate'] < 1e-3 * 0.01             # cosine to the end of the new length, from the new peak

def test_resume_from_an_unreadable_checkpoint_names_the_file(run_copy, docs):
    ck = run_copy/'checkpoints'/'step-4'
    (ck/'model.safetensors').write_bytes(b'abc')                  # damaged, and the manifest updated to match
    manifest = json.loads((ck/'manifest.json').read_text())
    manifest['model.safetensors'] = dict(size=3, sha256=hashlib.sha256(b'abc').hexdigest())
    (ck/'manifest.json').write_text(json.dumps(manifest))
    before = tree_hash(run_copy)
    err = refused('train', *args(run_copy, docs, steps=6, **{'training.resume_from': 'latest'}))
    assert f"{ck/'model.safetensors'}: cannot load into this model (SafetensorError" in err
    assert tree_hash(run_copy) == before

def test_resuming_a_finished_run_keeps_one_record_per_step(run_copy, docs):
    before = json.loads((run_copy/'loss_history.json').read_text())
    main(['train', *args(run_copy, docs, **{'training.resume_from': 'latest'})])
    after = json.loads((run_copy/'loss_history.json').read_text())
    assert [h['step'] for h in after] == [h['step'] for h in before] == sorted({h['step'] for h in before})
    assert after == before

# 3. merge-lora never writes over its inputs
@pytest.fixture(scope='module')
def adapter(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from llm_nb.testing import tiny_gpt2
    from llm_nb.tokenisation import train_tokenizer
    d = tmp_path_factory.mktemp('lora')
    tok = train_tokenizer(['hello world, hello there'] * 10, vocab_size=300)
    tiny_gpt2(len(tok), n_layer=1, n_positions=32, dropout=0.1).save_pretrained(d/'base')
    tok.save_pretrained(d/'base')
    from transformers import AutoModelForCausalLM
    m = get_peft_model(AutoModelForCausalLM.from_pretrained(d/'base'), LoraConfig(r=4, target_modules=['c_attn']))
    m.save_pretrained(d/'adapter'); tok.save_pretrained(d/'adapter')
    return d

@pytest.mark.parametrize('target', ['base', 'adapter', 'adapter/merged', '.'])
def test_merge_lora_never_writes_into_its_inputs(adapter, target):
    before = tree_hash(adapter)
    err = refused('merge-lora', '--adapter', adapter/'adapter', '--output', adapter/target, '--overwrite')
    assert 'the input' in err and 'choose a new folder' in err
    assert tree_hash(adapter) == before

def test_merge_lora_refuses_a_non_empty_folder_unless_told(adapter, tmp_path):
    out = tmp_path/'merged'; out.mkdir(); (out/'keep.txt').write_text('mine')
    err = refused('merge-lora', '--adapter', adapter/'adapter', '--output', out)
    assert f'{out} exists and is not empty; choose a new folder, or pass --overwrite' in err
    assert [p.name for p in out.iterdir()] == ['keep.txt']
    r = run_cli('merge-lora', '--adapter', adapter/'adapter', '--output', out, '--overwrite', preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr[-3000:]
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(out)
    assert not (out/'keep.txt').exists() and [p.name for p in tmp_path.iterdir()] == ['merged']   # no temporary left
    assert (out/'model.safetensors').stat().st_mode & 0o777 == 0o644

# Smaller faults
def test_weights_get_the_users_umask(finished):
    for f in ('final/model.safetensors', 'best/model.safetensors', 'checkpoints/step-4/model.safetensors'):
        assert (finished/f).stat().st_mode & 0o777 == 0o644, f   # umask 022: readable by a server running as another user

@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_and_exits_non_zero_without_final(tmp_path, docs, sig, capsys):
    out = tmp_path/'out'
    p = subprocess.Popen([sys.executable, '-m', 'llm_nb', 'train', *args(out, docs, steps=100000, **{'training.save_steps': 100000})],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out/'loss_history.json').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.3)
    p.send_signal(sig)
    stdout, _ = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, stdout[-3000:]
    assert 'Resume with: llm_nb train' in stdout and 'Interrupted at step' in stdout and 'Done' not in stdout
    assert (out/'checkpoints'/'interrupted'/'model.safetensors').exists() and not (out/'final').exists()
    if sig == signal.SIGTERM:   # and the interrupted run continues where it stopped
        step = json.loads((out/'checkpoints'/'interrupted'/'trainer_state.json').read_text())['state']['step']
        main(['train', *args(out, docs, steps=step + 2, **{'training.resume_from': 'latest'})])
        assert f"Resumed from {out/'checkpoints'/'interrupted'} at step {step} " in capsys.readouterr().out and (out/'final').exists()

# 5. Generation past the context; a pickle-only model folder
def test_generate_fits_the_context_and_refuses_an_empty_prompt(finished):
    long = ' '.join(['Fellow citizens of the Senate and House of Representatives.'] * 30)
    with pytest.warns(UserWarning, match="to fit the model's context of 64 tokens"):
        main(['generate', '--model_path', str(finished/'final'), '--prompt', long, '--max_new_tokens', '100', '--temperature', '0'])
    assert refused('generate', '--model_path', finished/'final', '--prompt', '') == \
        "llm_nb generate: error: the prompt is empty: give some text to continue"

def test_a_pickle_only_model_folder_is_refused_with_the_reason(tmp_path):
    from llm_nb.testing import tiny_gpt2
    from llm_nb.tokenisation import train_tokenizer
    d = tmp_path/'pickled'
    tok = train_tokenizer(['hello world, hello there'] * 10, vocab_size=300)
    m = tiny_gpt2(len(tok), n_layer=1, n_positions=32, dropout=0.1)
    m.config.save_pretrained(d); tok.save_pretrained(d); torch.save(m.state_dict(), d/'pytorch_model.bin')
    before = tree_hash(d)
    for cmd in (['evaluate', '--model_path', d], ['generate', '--model_path', d, '--prompt', 'hello']):
        err = refused(*cmd)
        assert f"{d}: holds only pickle weights (pytorch_model.bin); llm_nb loads safetensors only, because unpickling" in err
        assert 'weights_only=False' not in err
    assert tree_hash(d) == before

# 6. A full disk
@pytest.fixture
def small_disk(tmp_path):
    "A 3.5 MB tmpfs: room for one checkpoint of the tiny model (2.1 MB), not two."
    mnt = tmp_path/'disk'; mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3500k', 'tmpfs', str(mnt)], capture_output=True).returncode:
        pytest.skip('needs root to mount a small tmpfs')
    yield mnt
    subprocess.run(['umount', '-l', str(mnt)])

def test_a_full_disk_ends_the_run_with_one_message_and_the_last_checkpoint_intact(small_disk, docs):
    out = small_disk/'out'
    err = refused('train', *args(out, docs, steps=6, **{'training.eval_steps': 100}))
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert f"llm_nb train: error: no space left on the device writing {out/'checkpoints'/'step-4'}: it needs about " in lines[0]
    assert f"The last checkpoint, {out/'checkpoints'/'step-2'} (step 2), is intact (verified)" in lines[0]
    assert 'training.resume_from=latest' in lines[0]
    assert not (out/'final').exists() and not list(out.glob('checkpoints/.*'))   # no export, no temporary left behind
    from llm_nb.checkpoint import verify_folder
    verify_folder(out/'checkpoints'/'step-2')
