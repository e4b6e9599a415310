"E-mail notifications (`llm_nb.notify`) end to end against a real SMTP server on loopback (aiosmtpd)."
import logging, socket, warnings
from email import message_from_bytes
from email.policy import default as email_policy
from pathlib import Path
import pytest, torch
from llm_nb.loop import Learner, ClipGradCB, TrainMetricsCB, EvalCB, HistoryCB, JsonlCB
from llm_nb.metrics import AlertsCB
from llm_nb.notify import EmailNotifyCB, SMTPSettings, Mailer
from llm_nb.config import ConfigError
from llm_nb.testing import tiny_gpt2

aiosmtpd = pytest.importorskip('aiosmtpd', reason='pip install aiosmtpd (dev dependency) to run the SMTP tests')
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

PASSWORD = 'Pw-7f3k-secret'

class Inbox:
    def __init__(self): self.msgs = []
    async def handle_DATA(self, server, session, envelope):
        self.msgs.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=email_policy))); return '250 OK'

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture
def smtp():
    warnings.filterwarnings('ignore', message='Requiring AUTH while not requiring TLS')
    logging.getLogger('mail.log').setLevel(logging.ERROR)
    inbox, port = Inbox(), free_port()
    # handled=False: aiosmtpd then answers a refused login with 535 (by default it sends nothing and the client times out)
    auth = lambda server, session, envelope, mech, data: AuthResult(success=data.login == b'trainer' and data.password == PASSWORD.encode(), handled=False)
    ctl = Controller(inbox, hostname='127.0.0.1', port=port, authenticator=auth, auth_required=True, auth_require_tls=False)
    ctl.start()
    yield inbox, port
    ctl.stop()

def env(port, password=PASSWORD):
    return dict(LLM_NB_SMTP_HOST='127.0.0.1', LLM_NB_SMTP_PORT=str(port), LLM_NB_SMTP_USER='trainer',
                LLM_NB_SMTP_PASSWORD=password, LLM_NB_SMTP_TLS='none', LLM_NB_SMTP_FROM='llm_nb@test.local')

def text(msg): return msg.get_content().replace('\r\n', '\n')

def numbers(msg):
    return {k.strip(): v.strip() for k, v in (l.split(':', 1) for l in text(msg).splitlines() if ': ' in l)}

def learner(cbs, steps=8, n=16, out=None):
    model = tiny_gpt2(n_layer=1, dropout=0.1)   # seeded: the rows below come from the global RNG after it
    x = torch.randint(0, 64, (n, 16))
    rows = [dict(input_ids=r, labels=r.clone(), attention_mask=torch.ones_like(r)) for r in x]
    dl = lambda rs: torch.utils.data.DataLoader(rs, batch_size=4)
    extra = [HistoryCB(out), JsonlCB(out)] if out else []
    return Learner(model, dl(rows), dl(rows[:4]), opt=torch.optim.AdamW(model.parameters(), lr=1e-3), max_steps=steps,
                   mixed_precision='no', cbs=[ClipGradCB(1.0), TrainMetricsCB(2), EvalCB(4), AlertsCB(), *extra, *cbs])

def test_messages_arrive_with_subjects_and_numbers(smtp, tmp_path, caplog, capsys):
    inbox, port = smtp
    cb = EmailNotifyCB('me@example.org, you@example.org', status_every_minutes=1e-6, run_name='tiny',
                       config=dict(output_dir=str(tmp_path), training=dict(learning_rate=1e-3, max_steps=8)),
                       settings=SMTPSettings.from_env(env(port)))
    with caplog.at_level(logging.DEBUG): learn = learner([cb], out=tmp_path).fit()
    subjects = [m['Subject'] for _, m in inbox.msgs]
    assert cb.mailer.failed == [] and len(cb.mailer.sent) == len(subjects)
    assert subjects[0] == '[llm_nb] tiny: training started' and subjects[-1] == '[llm_nb] tiny: training finished'
    assert [s for s in subjects if 'epoch' in s] == ['[llm_nb] tiny: epoch 1/2 done', '[llm_nb] tiny: epoch 2/2 done']
    # a status every step (interval ~0): 8 of them, numbered
    assert [s for s in subjects if 'status' in s] == [f'[llm_nb] tiny: status at step {i}/8' for i in range(1, 9)]
    # each alert mailed once when it becomes active, with the value that tripped it
    first_eval = next(r for r in learn.history if 'eval_perplexity' in r)
    alert = next(m for _, m in inbox.msgs if m['Subject'] == '[llm_nb] tiny: ALERT eval_perplexity')
    assert sum('ALERT eval_perplexity' in s for s in subjects) == 1
    assert float(numbers(alert)['value']) == pytest.approx(first_eval['eval_perplexity'], rel=1e-5)
    assert float(numbers(alert)['threshold']) == 50
    # recipients, sender
    assert all(rcpt == ['me@example.org', 'you@example.org'] for rcpt, _ in inbox.msgs)
    assert all(m['From'] == 'llm_nb@test.local' for _, m in inbox.msgs)
    # the numbers are the logged ones
    by_step = {}
    for r in learn.history: by_step.setdefault(r['step'], {}).update(r)
    ep = [numbers(m) for _, m in inbox.msgs if 'epoch' in m['Subject']]
    for e, step in zip(ep, (4, 8)):
        assert e['step'] == f'{step}/8'
        for k in ('loss', 'eval_loss', 'eval_token_accuracy'): assert float(e[k]) == pytest.approx(by_step[step][k], rel=1e-5)
    final = numbers(inbox.msgs[-1][1])
    for k in ('loss', 'eval_loss', 'eval_perplexity', 'grad_norm', 'learning_rate'):
        assert float(final[k]) == pytest.approx(by_step[8][k], rel=1e-5)
    start = numbers(inbox.msgs[0][1])
    assert start['training.learning_rate'] == '0.001' and start['max_steps'] == '8'
    status = text(next(m for _, m in inbox.msgs if m['Subject'].endswith('status at step 5/8')))
    active = status.split('Active alerts:\n')[1].splitlines()
    assert any(l.startswith('eval_perplexity = ') for l in active) and 'Device:\ndevice: cpu' in status
    # the password is nowhere: not in the mails, the output folder, the logs or the console
    out = capsys.readouterr()
    assert all(PASSWORD not in m.as_string() for _, m in inbox.msgs)
    assert all(PASSWORD.encode() not in f.read_bytes() for f in tmp_path.rglob('*') if f.is_file())
    assert PASSWORD not in caplog.text and PASSWORD not in out.out + out.err

def test_wrong_password_warns_once_without_the_password_and_training_completes(smtp, caplog):
    inbox, port = smtp
    cb = EmailNotifyCB('me@example.org', status_every_minutes=0, settings=SMTPSettings.from_env(env(port, 'wrong-Pw-999')),
                       retries=3, backoff=0.01, timeout=5)
    with caplog.at_level(logging.WARNING, logger='llm_nb'): learn = learner([cb], steps=4).fit()
    assert learn.state.step == 4 and inbox.msgs == [] and cb.mailer.sent == []
    assert cb.mailer.failed[0] == '[llm_nb] run: training started' and cb.mailer.failed[-1] == '[llm_nb] run: training finished'
    warns = [r.getMessage() for r in caplog.records if r.name == 'llm_nb' and 'e-mail' in r.getMessage()]
    assert len(warns) == 1 and 'login' in warns[0] and '535' in warns[0] and 'LLM_NB_SMTP_PASSWORD' in warns[0]
    assert 'wrong-Pw-999' not in caplog.text

def test_dead_server_only_warns(caplog):
    port = free_port()   # nothing listens there
    cb = EmailNotifyCB('me@example.org', status_every_minutes=0, settings=SMTPSettings.from_env(env(port)), retries=3, backoff=0.01, timeout=2)
    with caplog.at_level(logging.WARNING, logger='llm_nb'): learn = learner([cb], steps=4).fit()
    assert learn.state.step == 4 and cb.mailer.sent == []
    assert cb.mailer.failed[0] == '[llm_nb] run: training started' and cb.mailer.failed[-1] == '[llm_nb] run: training finished'
    warns = [r.getMessage() for r in caplog.records if 'not sent' in r.getMessage()]
    assert len(warns) == len(cb.mailer.failed) and 'after 3 tries' in warns[0] and 'Connection refused' in warns[0]
    assert PASSWORD not in caplog.text

def test_send_does_not_wait_for_the_server():
    "A server that accepts the connection and never answers: `send` returns while the worker is still waiting on it."
    with socket.socket() as srv:
        srv.bind(('127.0.0.1', 0)); srv.listen(1)
        m = Mailer(SMTPSettings('127.0.0.1', srv.getsockname()[1], tls='none'), 'a@b.c', retries=1, timeout=1)
        m.send('s', 'b')
        assert (m.sent, m.failed) == ([], []) and m.thread.is_alive()   # still in flight: the caller did not wait
        m.close(timeout=20)
    assert m.failed == ['s']

def test_unfinished_epoch_gets_no_epoch_mail(smtp):
    inbox, port = smtp
    cb = EmailNotifyCB('me@example.org', status_every_minutes=0, run_name='r', settings=SMTPSettings.from_env(env(port)))
    learner([cb], steps=6).fit()   # 4 steps per epoch: epoch 2 stops half way
    assert [m['Subject'] for _, m in inbox.msgs if 'epoch' in m['Subject']] == ['[llm_nb] r: epoch 1/2 done']

def test_settings_errors_name_the_variable(monkeypatch):
    for k in ('HOST', 'PORT', 'USER', 'PASSWORD', 'TLS', 'FROM'): monkeypatch.delenv(f'LLM_NB_SMTP_{k}', raising=False)
    with pytest.raises(ConfigError, match='LLM_NB_SMTP_HOST'): EmailNotifyCB('me@example.org')
    monkeypatch.setenv('LLM_NB_SMTP_HOST', 'smtp.example.org'); monkeypatch.setenv('LLM_NB_SMTP_PORT', '58x')
    with pytest.raises(ConfigError, match='LLM_NB_SMTP_PORT'): EmailNotifyCB('me@example.org')
    monkeypatch.setenv('LLM_NB_SMTP_PORT', '465'); monkeypatch.setenv('LLM_NB_SMTP_PASSWORD', 'p4ss')
    s = EmailNotifyCB('me@example.org').settings
    assert (s.host, s.port, s.tls) == ('smtp.example.org', 465, 'ssl') and 'p4ss' not in repr(s)
    with pytest.raises(ConfigError, match='notifications.email_to'): EmailNotifyCB(' , ')
