"`llm_nb convert-config` in process: the earlier projects' configs become llm_nb YAML that `llm_nb train` accepts."
import json
from pathlib import Path
import pytest, yaml
from llm_nb.cli import main
from llm_nb.config import load_config

ORCHESTRATOR = """
training:
  training_type: "sft"
  sft:
    num_train_epochs: 2
    learning_rate: 2e-5
    warmup_ratio: 0.1
    lr_scheduler_type: "cosine"
  from_scratch:
    learning_rate: 5e-4
  lora:
    enabled: true
    r: 8
    task_type: "CAUSAL_LM"
  learning_rate: 1e-3
  bf16: true
  fp16: false
  num_gpus: 8
  report_to: "wandb"
"""
LORA_JSON = {"model_name_or_path": "mistralai/Mistral-7B-v0.1", "use_lora": True, "load_in_4bit": True, "lora_r": 16,
             "max_seq_length": 2048, "train_batch_size": 1, "learning_rate": 2e-5, "fp16": True, "bf16": False,
             "deepspeed_config": "training/configs/deepspeed_zero3.json"}
GPT2 = ("python main.py train --max_epochs 20 --batch_size 16 --learning_rate 5e-4 \\\n"
        "  --checkpoint_dir my_checkpoints --resume_from checkpoints/checkpoint_epoch_5.pth\n")

def run(argv, capsys):
    "Exit status (0 when `main` returns), stdout and stderr of `llm_nb *argv`."
    try: main(argv); code = 0
    except SystemExit as e: code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err

def test_orchestrator_to_stdout(tmp_path, capsys):
    f = tmp_path/'orch.yaml'; f.write_text(ORCHESTRATOR)
    code, out, err = run(['convert-config', str(f)], capsys)
    assert code == 0, err
    (tmp_path/'run.yaml').write_text(out)
    c = load_config(tmp_path/'run.yaml')
    assert c.training_type == 'lora'                       # sft + lora.enabled
    assert c.training.learning_rate == 2e-5                # the sft sub-section wins over training.learning_rate 1e-3
    assert (c.training.num_train_epochs, c.training.warmup_ratio, c.training.lr_scheduler_type) == (2, 0.1, 'cosine')
    assert (c.lora.r, c.training.mixed_precision, c.logging.report_to) == (8, 'bf16', ['wandb'])
    assert 'training.sft.learning_rate' in err and '-> training.learning_rate' in err
    assert 'training.learning_rate' in err and 'overridden by training.sft.learning_rate' in err
    assert 'training.from_scratch.learning_rate' in err and 'used only when training_type is from_scratch' in err
    assert 'training.num_gpus' in err and 'accelerate launch' in err
    assert 'training.lora.task_type' in err and 'implied' in err

def test_lora_json_to_output(tmp_path, capsys):
    f = tmp_path/'args.json'; f.write_text(json.dumps(LORA_JSON))
    out = tmp_path/'run.yaml'
    code, stdout, err = run(['convert-config', str(f), '--output', str(out)], capsys)
    assert code == 0, err
    assert stdout == '' and f'written to {out}' in err
    c = load_config(out)
    assert (c.training_type, c.model.load_in_4bit, c.model.name_or_path) == ('lora', True, LORA_JSON['model_name_or_path'])
    assert (c.model.max_length, c.training.per_device_train_batch_size, c.lora.r) == (2048, 1, 16)
    assert (c.training.learning_rate, c.training.mixed_precision) == (2e-5, 'fp16')
    assert 'deepspeed_config' in err

def test_refuses_existing_output(tmp_path, capsys):
    f = tmp_path/'args.json'; f.write_text(json.dumps(LORA_JSON))
    out = tmp_path/'run.yaml'; out.write_text('keep me')
    code, _, err = run(['convert-config', str(f), '--output', str(out)], capsys)
    assert 'exists: give --overwrite' in str(code) and out.read_text() == 'keep me'
    code, _, err = run(['convert-config', str(f), '--output', str(out), '--overwrite'], capsys)
    assert code == 0 and load_config(out).training_type == 'lora'

def test_command_line_file(tmp_path, capsys):
    f = tmp_path/'train.sh'; f.write_text(GPT2)
    code, out, err = run(['convert-config', str(f)], capsys)
    assert code == 0, err
    (tmp_path/'run.yaml').write_text(out)
    c = load_config(tmp_path/'run.yaml')
    assert (c.training.num_train_epochs, c.training.per_device_train_batch_size, c.training.learning_rate) == (20, 16, 5e-4)
    assert (c.output_dir, c.training.resume_from) == ('my_checkpoints', None)
    assert '--resume_from' in err and 'cannot resume' in err

def test_not_a_seed_config(tmp_path, capsys):
    f = tmp_path/'mine.yaml'; f.write_text('training: {max_steps: 5}\n')
    code, _, _ = run(['convert-config', str(f)], capsys)
    assert 'not a config of a known earlier project' in str(code) and 'llm_nb train --config' in str(code)

def test_train_hints_convert_config(tmp_path, capsys):
    f = tmp_path/'args.json'; f.write_text(json.dumps(LORA_JSON))
    code, _, _ = run(['train', '--config', str(f)], capsys)
    assert 'unknown config key model_name_or_path' in str(code)
    assert f'this looks like a LoRA/QLoRA fine-tuner (flat JSON) config; run `llm_nb convert-config {f}`' in str(code)
    f = tmp_path/'train.txt'; f.write_text(GPT2)
    code, _, _ = run(['train', '--config', str(f)], capsys)
    assert f'this looks like a GPT-2 from scratch (command-line flags) config; run `llm_nb convert-config {f}`' in str(code)
    f = tmp_path/'mine.yaml'; f.write_text('training: {learnig_rate: 0.1}\n')
    code, _, _ = run(['train', '--config', str(f)], capsys)
    assert 'unknown config key training.learnig_rate' in str(code) and 'convert-config' not in str(code)

SEED_ORCHESTRATOR = """
training:
  training_type: "from_scratch"
  from_scratch:
    num_train_epochs: 3
    per_device_train_batch_size: 4
    learning_rate: 5e-5
    warmup_steps: 500
  lora:
    enabled: true
    r: 16
    lora_alpha: 32
    lora_dropout: 0.1
    target_modules: ["q_proj", "v_proj", "k_proj", "o_proj"]
    bias: "none"
    task_type: "CAUSAL_LM"
  dpo:
    beta: 0.1
    max_length: 1024
  bf16: true
  warmup_ratio: 0.05
  lr_scheduler_type: "cosine_with_restarts"
"""

def converted(tmp_path, capsys, text, name='orch.yaml'):
    "The YAML `llm_nb convert-config` writes for the source `text` (as a dict), and its report (stderr)."
    f = tmp_path/name; f.write_text(text)
    code, out, err = run(['convert-config', str(f), '--output', str(tmp_path/'run.yaml')], capsys)
    assert code == 0, (code, err)
    return yaml.safe_load((tmp_path/'run.yaml').read_text()), err

def not_converted(err) -> dict:
    "The report's `not converted:` lines as {source key: reason}."
    lines = err.split('not converted:\n', 1)[1].splitlines()
    return dict(l.strip().split(None, 1) for l in lines if l.startswith('  '))

def test_from_scratch_leaves_out_lora(tmp_path, capsys):
    "The seed orchestrator example: a from_scratch run with `lora.enabled: true` gets no lora: section, and says why."
    out, err = converted(tmp_path, capsys, SEED_ORCHESTRATOR)
    assert out['training_type'] == 'from_scratch' and 'lora' not in out and 'dpo' not in out
    left = not_converted(err)
    for k in ('r', 'lora_alpha', 'lora_dropout', 'target_modules', 'bias'):
        assert left[f'training.lora.{k}'] == 'unused: training_type=from_scratch trains no LoRA adapters (training_type=lora, or dpo with dpo.use_lora=true, does)'
    assert 'training.lora.r ' not in err.split('not converted:')[0]             # not under `converted:`
    load_config(tmp_path/'run.yaml')

def test_dpo_with_lora_keeps_lora(tmp_path, capsys):
    out, err = converted(tmp_path, capsys, SEED_ORCHESTRATOR.replace('"from_scratch"', '"dpo"'))
    assert out['training_type'] == 'dpo' and out['dpo']['use_lora'] is True and out['lora']['lora_dropout'] == 0.1
    assert out['dpo'] == {'beta': 0.1, 'max_length': 1024, 'use_lora': True}
    load_config(tmp_path/'run.yaml')

def test_warmup_steps_take_precedence(tmp_path, capsys):
    "HF's rule: warmup_steps > 0 overrides warmup_ratio. The converted config keeps only the 500 steps, and says so."
    from llm_nb.loop import warmup_for
    out, err = converted(tmp_path, capsys, SEED_ORCHESTRATOR)
    assert out['training']['warmup_steps'] == 500 and 'warmup_ratio' not in out['training']
    assert not_converted(err)['training.warmup_ratio'].startswith('warmup_steps takes precedence (training.from_scratch.warmup_steps=500')
    assert warmup_for(load_config(tmp_path/'run.yaml').training, 10_000) == 500   # 500 steps, as HF would warm up; not 5% of 10k

def test_error_naming_a_second_key(tmp_path, capsys):
    "A refused combination leaves out the key the error starts with, not another key the message also names."
    src = {'training': {'training_type': 'from_scratch', 'learning_rate': 1e-4, 'lr_scheduler_type': 'polynomial',
                        'lr_scheduler_kwargs': {'lr_end': 1e-3}, 'use_domain_stratified': False, 'domain_weights': {'code': 1.0}}}
    out, err = converted(tmp_path, capsys, yaml.safe_dump(src))
    assert out['training'] == {'learning_rate': 1e-4, 'lr_scheduler_type': 'polynomial'}   # lr_end's error names training.learning_rate
    assert out['sampling'] == {'use_domain_stratified': False}   # domain_weights' error names the switch
    left = not_converted(err)
    assert left['training.lr_scheduler_kwargs'] == 'left out: training.lr_scheduler_kwargs.lr_end=0.001 must be below training.learning_rate=0.0001'
    assert left['training.domain_weights'] == 'left out: sampling.domain_weights is set but sampling.use_domain_stratified is false'
    assert 'training.learning_rate' not in left and 'training.use_domain_stratified' not in left
    load_config(tmp_path/'run.yaml')

def test_never_writes_over_its_input(tmp_path, capsys):
    f = tmp_path/'args.json'; f.write_text(json.dumps(LORA_JSON)); before = f.read_text()
    code, _, _ = run(['convert-config', str(f), '--output', str(f), '--overwrite'], capsys)
    assert 'is the file being converted' in str(code) and f.read_text() == before
