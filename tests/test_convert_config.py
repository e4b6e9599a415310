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
