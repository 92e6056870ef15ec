"""The guard's detection core, pure: paths and bytes in, findings out.

The corpus is made at collection, so that each planted secret and each benign file is its
own test case: random tokens in each provider's format and real keys (openssl,
ssh-keygen, gpg), built at run time; no token-shaped literal sits in the repository.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import random
import string
import subprocess
import tempfile
from pathlib import Path

import guard_corpus as corpus
import pytest
from guard_corpus import ALNUM, KeyMaker, Randomness, stdlib_text, synthetic_minified_js

from gitsieve.common.judge.guard.allowlist import Allowlist, AllowlistError, EntryKind, compile_glob
from gitsieve.common.judge.guard.findings import (
    Finding,
    FindingKind,
    Fingerprinter,
    RuleId,
    git_blob_id,
)
from gitsieve.common.judge.guard.rules import CONTENT_RULES, content_profile
from gitsieve.common.judge.guard import scanner as scanner_module
from gitsieve.common.judge.guard.scanner import SecretScanner, is_binary
from gitsieve.common.judge.guard.sizeguard import lfs_track_command, oversized

KEY = bytes(range(32))
MIB = 1 << 20

with tempfile.TemporaryDirectory(prefix="guard-corpus-") as _made_in:
    PLANTED = corpus.planted_secrets(Path(_made_in))
    NAMED = corpus.named_files(Path(_made_in))
    BENIGN = corpus.benign_files(Path(_made_in))
IN_PATHS = corpus.planted_in_paths()


@pytest.fixture(scope="module")
def scanner() -> SecretScanner:
    return SecretScanner(key=KEY)


def shown_text(finding: Finding) -> str:
    """Everything a Finding could show: its repr, its rendering and each field."""
    fields = [str(getattr(finding, f.name)) for f in dataclasses.fields(finding)]
    return "\n".join([repr(finding), finding.render(), *fields])


def assert_never_shown(finding: Finding, secret: bytes) -> None:
    text = shown_text(finding).encode()
    pieces = {secret[i : i + 12] for i in range(0, max(1, len(secret) - 11))}
    assert not [piece for piece in pieces if piece in text], \
        f"{finding.rule.value} shows part of its secret"


# --- the corpus ----------------------------------------------------------------------------


def test_the_corpus_plants_enough_kinds():
    assert len({p.kind for p in PLANTED}) >= 60
    assert len({b.kind for b in BENIGN}) >= 20


def test_every_detector_is_exercised_by_the_corpus(scanner):
    """A rule no planted secret reaches could be broken without any test noticing."""
    seen = {f.detector for p in PLANTED for f in scanner.scan(p.path, p.content)}
    assert {rule.detector for rule in CONTENT_RULES} - seen == set()


@pytest.mark.parametrize("planted", PLANTED, ids=lambda p: p.kind)
def test_planted_secret_is_found_and_never_shown(scanner, planted):
    findings = scanner.scan(planted.path, planted.content)

    assert planted.rule in {f.rule.value for f in findings}
    found = next(f for f in findings if f.rule.value == planted.rule)
    assert found.kind is FindingKind.SECRET
    assert found.line >= 1 and found.column >= 1
    assert len(found.fingerprint) == 32
    for finding in findings:
        assert_never_shown(finding, planted.secret)


@pytest.mark.parametrize("planted", PLANTED, ids=lambda p: p.kind)
def test_finding_points_at_the_secret(scanner, planted):
    """Line and column lead the person to the secret (a key block: to its BEGIN line)."""
    finding = next(
        f for f in scanner.scan(planted.path, planted.content) if f.rule.value == planted.rule
    )
    text = planted.content if planted.encoding == "utf-8" else \
        planted.content.decode(planted.encoding).encode()
    line = text.split(b"\n")[finding.line - 1]
    if finding.rule is RuleId.PRIVATE_KEY:
        assert b"-----BEGIN" in line[finding.column - 1 :]
    else:
        assert planted.secret[:8] in line[finding.column - 1 :]


@pytest.mark.parametrize("planted", IN_PATHS, ids=lambda p: p.kind)
def test_a_token_in_a_path_is_found_and_never_shown(scanner, planted):
    """The path is pushed as well as the content: a token in a file's or a directory's name
    holds the file, from its name alone (the judge asks before reading any content).  The
    finding names the path, as every hold does; nothing else of it shows the token."""
    findings = scanner.filename_findings(planted.path)

    assert [(f.rule.value, f.kind, f.line, f.column) for f in findings] == [
        (planted.rule, FindingKind.SECRET, 0, 0)]
    assert "in the path" in findings[0].render()
    assert_never_shown(dataclasses.replace(findings[0], path="the path"), planted.secret)
    assert findings == [f for f in scanner.scan(planted.path, planted.content) if f.line == 0]


@pytest.mark.parametrize("path", [
    "docs/examples/AKIAIOSFODNN7EXAMPLE.json",
    "fixtures/" + "gh" + "p_" + "x" * 36 + ".txt",
    # the generic keyword rules do not read paths: names say what a file is about
    "config/db_password=Zq8vR2mLx9Tq.txt",
    "secrets/api_token_Zq8vR2mLx9TqW4pK7.json",
    "src/passwords/hunter2Xk9mQ2vL8pWz/README.md",
])
def test_paths_without_a_token_of_a_known_format_are_clean(scanner, path):
    assert scanner.filename_findings(path) == []


@pytest.mark.parametrize("named", NAMED, ids=lambda n: n.kind)
def test_file_named_like_a_secret_is_held(scanner, named):
    findings = scanner.scan(named.path, named.content)

    whole_file = [f for f in findings if f.kind is FindingKind.FILE_NAME]
    assert [f.rule.value for f in whole_file] == [named.rule]
    assert (whole_file[0].line, whole_file[0].column) == (0, 0)


@pytest.mark.parametrize("benign", BENIGN, ids=lambda b: b.kind)
def test_benign_file_that_looks_random_is_clean(scanner, benign):
    assert [f.render() for f in scanner.scan(benign.path, benign.content)] == []


def test_issue_12_reproduction(scanner, tmp_path):
    """The four files that were pushed in the issue: three are held, the public key is not."""
    r = Randomness(12)
    secret_key = r.mixed(ALNUM + "+/", 40)
    token = "gh" + "p_" + r.mixed(ALNUM, 36)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "id_rsa")],
        check=True,
    )

    env = scanner.scan(
        "config/.env", f"AWS_REGION=eu-west-1\nAWS_SECRET_ACCESS_KEY={secret_key}\n".encode()
    )
    notes = scanner.scan("docs/notes.md", f"# Notes\n\nGitHub token: {token}\n".encode())
    private = scanner.scan("id_rsa", (tmp_path / "id_rsa").read_bytes())
    public = scanner.scan("id_rsa.pub", (tmp_path / "id_rsa.pub").read_bytes())

    assert {f.rule for f in env} == {RuleId.ENV_FILE, RuleId.AWS_SECRET_ACCESS_KEY}
    assert [(f.rule, f.line) for f in notes] == [(RuleId.GITHUB_TOKEN, 3)]
    assert {f.rule for f in private} == {RuleId.SSH_PRIVATE_KEY_FILE, RuleId.PRIVATE_KEY}
    assert public == []


def test_an_edit_that_removes_the_secret_is_clean(scanner):
    token = "gl" + "pat-" + Randomness(3).mixed(ALNUM, 20)
    before = f"deploy:\n  token: {token}\n".encode()
    after = b"deploy:\n  token: ${GITLAB_TOKEN}\n"
    assert [f.rule for f in scanner.scan("ci.yml", before)] == [RuleId.GITLAB_TOKEN]
    assert scanner.scan("ci.yml", after) == []


def test_base64_encoded_secrets_in_a_kubernetes_secret_are_found(scanner, tmp_path):
    token = ("gh" + "p_" + Randomness(4).mixed(ALNUM, 36)).encode()
    key = KeyMaker(tmp_path).pkcs8()
    manifest = (b"apiVersion: v1\nkind: Secret\ndata:\n  token: " + base64.b64encode(token)
                + b"\n  tls.key: " + base64.b64encode(key) + b"\n")
    findings = scanner.scan("k8s/secret.yaml", manifest)
    assert [(f.rule, f.line) for f in findings] == [(RuleId.GITHUB_TOKEN, 4),
                                                    (RuleId.PRIVATE_KEY, 5)]
    assert "base64" in findings[0].description
    assert_never_shown(findings[0], token)
    # A base64-wrapped PEM block is found wherever it is (a kubeconfig, a CI variable).
    elsewhere = scanner.scan("ci/vars.txt", b"KEY=" + base64.b64encode(key) + b"\n")
    assert [f.rule for f in elsewhere] == [RuleId.PRIVATE_KEY]


def test_same_secret_twice_is_two_findings_with_one_fingerprint(scanner):
    r = Randomness(5)
    token = "xo" + "xb-" + r.text("0123456789", 11) + "-" + r.text("0123456789", 13) + "-" \
        + r.mixed(ALNUM, 24)
    findings = scanner.scan("bot.env.txt", f"A={token}\nB={token}\n".encode())
    assert [f.line for f in findings] == [1, 2]
    assert findings[0].fingerprint == findings[1].fingerprint


def test_one_key_has_one_fingerprint_raw_or_json_escaped(scanner, tmp_path):
    key = KeyMaker(tmp_path).pkcs8()
    (raw,) = scanner.scan("a.txt", key)
    (escaped,) = scanner.scan("b.json", b'{"k": "' + key.replace(b"\n", b"\\n") + b'"}')
    assert raw.fingerprint == escaped.fingerprint


def _pasted(key: bytes, form: str) -> tuple[str, bytes]:
    """A PEM block as people paste it into a file: (path, content)."""
    lines = key.strip().split(b"\n")
    if form == "without its end line":
        return "notes/key.txt", b"old server:\n" + b"\n".join(lines[:-1]) + b"\n\nmore notes\n"
    if form == "cut off at the end of the file":
        return "notes/key.txt", b"\n".join(lines[:-3])
    if form == "in python string literals":
        literals = b"".join(b'    "%s\\n"\n' % line for line in lines)
        return "keys.py", b"KEY = (\n" + literals + b")\n"
    if form == "in javascript strings joined with +":
        return "keys.js", b"const KEY =\n" + b" +\n".join(b"  '%s\\n'" % line for line in lines) \
            + b";\n"
    if form == "in a list of strings":
        return "keys.py", b"KEY_LINES = [" + b", ".join(b'"%s"' % line for line in lines) + b"]\n"
    if form == "in one string with escaped line breaks":
        return "keys.py", b'KEY = "' + b"\\n".join(lines) + b'\\n"\n'
    if form == "in one string continued over lines":
        return "keys.py", b'KEY = "' + b"\\n\\\n".join(lines) + b'\\n"\n'
    if form == "on one line, spaces for line breaks":
        return "docs/setup.md", b"Deploy key: " + b" ".join(lines) + b" (keep it safe)\n"
    raise ValueError(form)


PASTED_FORMS = ["without its end line", "cut off at the end of the file",
                "in python string literals", "in javascript strings joined with +",
                "in a list of strings", "in one string with escaped line breaks",
                "in one string continued over lines", "on one line, spaces for line breaks"]


@pytest.fixture(scope="module")
def pasted_keys(tmp_path_factory):
    """An RSA key (64-column lines, a short last one) and an OpenSSH key (70 columns)."""
    keys = KeyMaker(tmp_path_factory.mktemp("pasted"))
    rsa = keys.openssl_traditional("RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    openssh, _ = keys.ssh_keypair("ed25519", "pasted")
    return {"rsa": rsa, "openssh": openssh}


@pytest.mark.parametrize("kind", ["rsa", "openssh"])
@pytest.mark.parametrize("form", PASTED_FORMS)
def test_a_private_key_is_found_however_it_was_pasted(scanner, pasted_keys, kind, form):
    """A BEGIN line followed by key material is a key: cut short, split into a language's
    string literals, or with spaces for its line breaks; whole, it has the fingerprint of
    the key as a file."""
    key = pasted_keys[kind]
    path, content = _pasted(key, form)
    findings = scanner.scan(path, content)

    assert [f.rule for f in findings] == [RuleId.PRIVATE_KEY]
    assert b"-----BEGIN" in content.split(b"\n")[findings[0].line - 1]
    assert_never_shown(findings[0], corpus.pem_body(key))
    if "end" not in form:
        (as_a_file,) = scanner.scan("key.pem", key)
        assert findings[0].fingerprint == as_a_file.fingerprint


@pytest.mark.parametrize("path,text", [
    ("pem.py", 'if line.startswith("-----BEGIN RSA PRIVATE KEY-----"):\n    in_key = True\n'
               'elif line.startswith("-----END RSA PRIVATE KEY-----"):\n    in_key = False\n'),
    ("pem.py", "PEM = re.compile(rb'-----BEGIN (?P<kind>[A-Z ]+)PRIVATE KEY-----\\s*'\n"
               "                 rb'(?P<body>[A-Za-z0-9+/=\\s]+)-----END')\n"),
    ("pem.py", 'pem = "-----BEGIN PRIVATE KEY-----\\n" + body + "\\n-----END PRIVATE KEY-----"\n'),
    ("pem.go", 'const header = "-----BEGIN EC PRIVATE KEY-----"\nconst footer = "-----END EC '
               'PRIVATE KEY-----"\n'),
    ("README.md", "A key starts with -----BEGIN OPENSSH PRIVATE KEY----- and the base64 encoded "
                  "key material follows on the lines below it, wrapped at seventy columns\n"),
    ("README.md", "-----BEGIN RSA PRIVATE KEY-----\nPaste the rest of your key below this line "
                  "and save the file.\n"),
    ("README.md", "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(
        Randomness(n).mixed(corpus.B64, 64) for n in range(2)) + "\n...\n"),
    ("README.md", "-----BEGIN RSA PRIVATE KEY-----\n" + Randomness(3).mixed(corpus.B64, 64)
     + "\n[...]\n-----END RSA PRIVATE KEY-----\n"),
    ("README.md", "-----BEGIN OPENSSH PRIVATE KEY----- <your key> "
                  "-----END OPENSSH PRIVATE KEY-----"),
    ("key.txt", "-----BEGIN RSA PRIVATE KEY-----\n" + "A" * 64 + "\n" + "A" * 64 + "\n"),
])
def test_a_private_key_header_without_key_material_is_not_a_finding(scanner, path, text):
    assert scanner.scan(path, text.encode()) == []


@pytest.mark.parametrize(
    "text",
    [
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "token: " + "gh" + "p_" + "x" * 36,
        "token: " + "gh" + "p_" + "0" * 36,
        "STRIPE=" + "sk" + "_live_" + "X" * 24,
        "key = " + "AI" + "za" + "<your-google-api-key-goes-here>",
        "url: postgres://user:password@localhost:5432/app",
        "url: postgres://postgres:postgres@db:5432/app",
        "url: mysql://app:${DB_PASSWORD}@db/app",
        "url: https://deploy:<token>@git.example.org/repo.git",
        "url: redis://:****@cache:6379",
        "url: https://user:token@github.com/org/repo.git",
        'client_secret = "' + "abc1" + "Q~" + "x" * 34 + '"',
        "slack: " + "xo" + "xb-your-token-here",
        "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n<paste your key here>\n"
        "-----END OPENSSH PRIVATE KEY-----",
        # jwt.io's example token: the claims are an example (John Doe, 1234567890)
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwi"
        "aWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    ],
    ids=lambda t: t.split("\n")[0][:40],
)
def test_placeholders_are_not_findings(scanner, text):
    assert scanner.scan("docs/example.md", text.encode()) == []


PASSWORD = "Zq8!vR2m#Lx"


@pytest.mark.parametrize(
    "path,text",
    [
        ("settings.py", f'DB_PASSWORD = "{PASSWORD}"'),
        ("settings.py", f"password: str = '{PASSWORD}'"),
        ("app.js", f"const config = {{ apiKey: `{PASSWORD}` }};"),
        ("config.yaml", f"database:\n  password: {PASSWORD}"),
        ("app.ini", f"[db]\npasswd={PASSWORD}"),
        ("deploy.sh", f"export ADMIN_PASSWORD={PASSWORD}"),
        ("config.json", f'{{"client_secret": "{PASSWORD}"}}'),
        ("Settings.cs", f'var secretKey = "{PASSWORD}";'),
        ("django/settings.py", "SECRET_KEY = 'django-insecure-9x!k2@p#t7m$w4q&z1'"),
        # "#", ";", "," and parentheses inside an unquoted value are its own (a comment
        # starts after a space): each was cut short or taken for a call, and pushed
        ("config.yml", "db_password: Xk9#mQ2vL8pWz"),
        ("deploy.sh", "export DB_PASSWORD=Xk9#mQ2vL8pWz"),
        ("staging.env", "DB_PASSWORD=Xk9#mQ2vL8pWz # the staging one"),
        ("config.yml", "db_password: Xk9(mQ2vL8pWz"),
        ("deploy.sh", "DB_PASSWORD=Xk9)mQ2vL8pWz"),
        ("config.yml", "db_password: Xk9;mQ2vL8pWz"),
        ("app.ini", "[db]\npassword=Zq8,Lm2pW9xT"),
        ("config.yml", "{user: bob, password: Xk9;mQ2vL8pWz}"),
        # an environment list: the name above its value (Kubernetes, compose, CI)
        ("k8s/deploy.yaml", "env:\n  - name: DB_PASSWORD\n    value: \"Zq8Lm2pW9xTr4\"\n"),
        ("k8s/deploy.yaml", "env:\n- name: DB_PASSWORD\n  value: Zq8Lm2pW9xTr4\n- name: X\n"),
        # names ending in "pass", "passwd" or "pwd" (Ansible vars, dotenv, mailer configs)
        ("group_vars/all.yml", "db_pass: s3cr3tValue"),
        ("group_vars/db.yml", "mysql_pass: Xk9#mQ2vL8pWz"),
        ("roles/web/vars/main.yml", "admin_pass: 'Zq8!vR2m#Lx'"),
        ("host_vars/db1.yml", "db_passwd: s3cr3tValue"),
        ("host_vars/db1.yml", "root_pwd: s3cr3tValue"),
        ("deploy.sh", "export DB_PASS=Xk9#mQ2vL8pWz"),
        ("config.json", f'{{"dbPass": "{PASSWORD}"}}'),
        ("mailer.js", f"const auth = {{ user: 'bob', pass: '{PASSWORD}' }};"),
    ],
)
def test_password_assignment_with_strong_context_is_found(scanner, path, text):
    assert RuleId.PASSWORD_ASSIGNMENT in {f.rule for f in scanner.scan(path, text.encode())}


# Generated passwords that read as camel case to the old name check: one random
# 20-character password in three was pushed.
@pytest.mark.parametrize("password", [
    "xdrfdU1Rb4h03Jb9JQld", "bmLCssUJO3GBwhH1kZZL", "ozFgxgTXHeiUGCo3nDY8",
    "sHp8IShXkdvF15EpohE5", "zqvagOfcrB14DjPlhly3", "nJ9AUjFPrKbxCeph5L0x",
    "iZXe24SrdnivEV3ZeRGp", "lAfyzKbM8qe1B147edgA", "x7f9-k2mq-4p8z",
    "anDxdnSwjqyCL2", "dodiLzptvCer9",  # a name's shape, but not a word's vowels
])
def test_a_generated_password_is_found_however_its_letters_fall(scanner, password):
    found = scanner.scan("settings.py", f'db_password = "{password}"\n'.encode())
    assert [f.rule for f in found] == [RuleId.PASSWORD_ASSIGNMENT]


@pytest.mark.parametrize("name", [
    "getUserName", "myAPIKey", "HTTPServerName", "currentValue2", "NotConfigured",
    "XMLHttpRequest", "readFromVault", "prod-db-01", "user1_pass2", "MY_DB_PASS_VAR",
])
def test_a_name_assigned_to_a_password_key_is_not_a_finding(scanner, name):
    assert scanner.scan("config.yaml", f"password: {name}\n".encode()) == []


def _random_text(alphabet: str, length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(length))


_ALNUM = string.ascii_letters + string.digits
_TOKEN = _random_text(_ALNUM, 40, 1)
_HEX_TOKEN = _random_text("0123456789abcdef", 32, 2)


@pytest.mark.parametrize(
    "path,text,rule",
    [
        ("app.py", f'auth_token = "{_TOKEN}"', RuleId.TOKEN_ASSIGNMENT),
        ("app.py", f'ACCESS_TOKEN = "{_HEX_TOKEN}"', RuleId.TOKEN_ASSIGNMENT),
        ("config.yaml", f"token: {_TOKEN}", RuleId.TOKEN_ASSIGNMENT),
        ("config.json", f'{{"accessToken": "{_TOKEN}"}}', RuleId.TOKEN_ASSIGNMENT),
        ("settings.py", f'PRIVATE_KEY = "{_TOKEN}"', RuleId.TOKEN_ASSIGNMENT),
        ("deploy.sh", f"export API_TOKEN={_TOKEN}", RuleId.TOKEN_ASSIGNMENT),
        ("app.ini", f"[auth]\ntoken={_HEX_TOKEN}", RuleId.TOKEN_ASSIGNMENT),
        ("app.cfg", f"encryption_key = {_TOKEN}", RuleId.TOKEN_ASSIGNMENT),
        ("call.sh", f'curl -H "Authorization: Bearer {_TOKEN}" https://api.example.com',
         RuleId.AUTHORIZATION_HEADER),
        ("client.py", f'headers = {{"Authorization": "token {_HEX_TOKEN}"}}',
         RuleId.AUTHORIZATION_HEADER),
        ("datasource.xml", f"<password>{PASSWORD}</password>", RuleId.PASSWORD_ASSIGNMENT),
    ],
)
def test_a_token_under_a_token_name_is_found(scanner, path, text, rule):
    assert rule in {f.rule for f in scanner.scan(path, text.encode())}


@pytest.mark.parametrize(
    "path,text",
    [
        ("api.json", f'{{"nextPageToken": "{_TOKEN}"}}'),
        ("form.py", f'csrf_token = "{_HEX_TOKEN}"'),
        ("aws.json", '"ClientRequestToken": "a8ca07e4-61ec-4399-99f4-19853801bcd5"'),
        ("app.py", 'token = os.environ["API_TOKEN"]'),
        ("ci.yaml", "token: ${{ secrets.GITHUB_TOKEN }}"),
        ("app.py", 'headers = {"Authorization": f"Bearer {token}"}'),
        ("call.sh", 'curl -H "Authorization: Bearer $TOKEN" https://api.example.com'),
        ("README.md", "Authorization: Bearer YOUR_ACCESS_TOKEN_HERE"),
        ("app.py", f'cache_key = "{_HEX_TOKEN}"'),
        ("app.py", 'TOKEN_URL = "https://oauth2.googleapis.com/token"'),
        ("app.py", 'token_type = "bearer"'),
        ("app.py", "max_tokens = 4096"),
        ("ec.py", 'def sign(backend: "Backend", private_key: "_EllipticCurvePrivateKey"):'),
        ("keys.json", '"ExportToken": "export-token-cu4lg26ofcziixny"'),
        ("app.py", 'token = "<your-token>"'),
    ],
)
def test_token_names_without_a_literal_token_are_not_findings(scanner, path, text):
    assert scanner.scan(path, text.encode()) == []


@pytest.mark.parametrize(
    "path,text",
    [
        ("auth.py", "password = request.POST['password']"),
        ("auth.py", "password = get_password_from_vault()"),
        ("auth.py", "if password == 'Zq8!vR2m#Lx':"),
        ("auth.py",
         "PASSWORD_HASH = '$2b$12$KIXQJ2ZkbT1v9yQm1p0eUeW4Pp9pEo0g6Yy3bVbqkq7Yx0m4dGm1W'"),
        ("auth.py", "api_key = settings.API_KEY"),
        ("auth.py", "secret_name = 'prod/db/credentials'"),
        ("config.yaml", "password: ${DB_PASSWORD}"),
        ("config.yaml", "password: '{{ vault_db_password }}'"),
        ("config.yaml", "password: changeme123"),
        ("config.yaml", "password: Password123"),
        ("messages.json", '{"password": "Your password must have 8 characters"}'),
        ("config.yaml", "secret: MY_SECRET_NAME"),
        ("config.yaml", "api_key: my.vault.path"),
        ("main.go", 'password := os.Getenv("PASSWORD")'),
        ("forms.html", '<input type="password" name="password" placeholder="Password">'),
        ("README.md", "  password: 'bm90IG15IHJlYWwgcGFzc3dvcmQ=',"),
        ("README.md",
         '"SecretArn": "arn:aws:secretsmanager:us-west-2:123456789012:secret:MySecret1-a1b2c3"'),
        ("webdav.json", '"Password": "generatedwebdavpassword1"'),
        # Ansible: vault references, vaulted values, templates, defaults, empty values
        ("group_vars/all.yml", 'db_pass: "{{ vault_db_pass }}"'),
        ("group_vars/all.yml", "db_pass: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n"
                               "  61383964313765373366343166\n"),
        ("group_vars/all.yml", "db_pass: changeme"),
        ("group_vars/all.yml", "db_pass: ${DB_PASS}"),
        ("group_vars/all.yml", "db_pass:\ndb_user: app"),
        ("group_vars/all.yml", 'db_pass: ""'),
        ("group_vars/all.yml", "db_pass: \"{{ lookup('env', 'DB_PASS') }}\""),
        # "pass" ending a longer word, or starting one, names no password
        ("ci.yml", "bypass: Xk9mQ2vL8pWz"),
        ("nav.yml", "compass: Xk9mQ2vL8pWz"),
        ("travel.yml", "passport: Xk9mQ2vL8pWz"),
        ("report.yml", "pass_rate: 0.95"),
        ("report.json", '{"pass": "all 12 checks passed"}'),
        ("tests.py", "def test_it():\n    pass  # nothing yet\n"),
    ],
)
def test_password_like_names_without_a_literal_secret_are_not_findings(scanner, path, text):
    assert scanner.scan(path, text.encode()) == []


@pytest.mark.parametrize("path,text,rule", [
    ("db.py", f'conn = "Server=db;Database=app;User Id=sa;Password={PASSWORD};"',
     RuleId.PASSWORD_ASSIGNMENT),
    ("App.java", f'String url = "jdbc:mysql://db/app?user=root&password={PASSWORD}";',
     RuleId.PASSWORD_ASSIGNMENT),
    ("config/application.rb", f"config.secret_key_base = '{_HEX_TOKEN * 4}'",
     RuleId.PASSWORD_ASSIGNMENT),
    ("backup.sh", f"mysqldump -u root -p{PASSWORD} app > app.sql", RuleId.COMMAND_LINE_PASSWORD),
    ("deploy.sh", f"sshpass -p '{PASSWORD}' ssh deploy@host", RuleId.COMMAND_LINE_PASSWORD),
    ("call.sh", f"curl -u admin:{PASSWORD} https://api.example.com", RuleId.COMMAND_LINE_PASSWORD),
    ("init.sql", f"CREATE USER app IDENTIFIED BY '{PASSWORD}';", RuleId.PASSWORD_ASSIGNMENT),
    ("init.sql", f"ALTER USER postgres WITH PASSWORD '{PASSWORD}';", RuleId.PASSWORD_ASSIGNMENT),
    ("wp-config.php", f"define( 'DB_PASSWORD', '{PASSWORD}' );", RuleId.PASSWORD_ASSIGNMENT),
    ("wp-config.php", f"define( 'AUTH_KEY', '{_TOKEN}' );", RuleId.PASSWORD_ASSIGNMENT),
    ("web.config", f'<add key="DbPassword" value="{PASSWORD}" />', RuleId.PASSWORD_ASSIGNMENT),
    ("notes.txt", f"pw: {PASSWORD}", RuleId.PASSWORD_ASSIGNMENT),
    # a notebook keeps its cells' code in JSON strings, their quotes escaped
    ("analysis.ipynb", f'  "source": ["password = \\"{PASSWORD}\\"\\n", "print(1)"],',
     RuleId.PASSWORD_ASSIGNMENT),
    ("analysis.ipynb", f'  "source": ["API_TOKEN = \\"{_TOKEN}\\"\\n"],', RuleId.TOKEN_ASSIGNMENT),
])
def test_a_literal_in_a_connection_string_statement_or_command_line_is_found(
        scanner, path, text, rule):
    assert rule in {f.rule for f in scanner.scan(path, text.encode())}


@pytest.mark.parametrize("path,text", [
    ("setup.py", "'password': config.get(server, 'password'),"),
    ("auth.py", 'x = "a"; password = compute_password'),
    ("helper.py", '""").format(username=account, password=access_token))'),
    ("run.sh", "git push -u origin main"),
    ("run.sh", "docker run -u 1000:1000 image"),
    ("run.sh", 'curl -u "$USER:$PASS" https://api.example.com'),
    ("run.sh", 'mysql -u root -p"$MYSQL_PASSWORD" app'),
    ("Perldoc.pm", "perldoc -u Some::Modulename"),
    ("package.json", '{"auth": "ZGVwbG95OnMzY3JldFZhbHVlMQ=="}'),
    ("config.json", '{"auth": "dGVzdA=="}'),
    ("init.sql", "CREATE USER app IDENTIFIED BY 'changeme';"),
    ("init.sql", "ALTER USER app WITH PASSWORD NULL;"),
    ("wp-config.php", "define( 'AUTH_KEY', 'put your unique phrase here' );"),
    ("web.config", '<add key="ApiBaseUrl" value="https://api.example.com" />'),
    ("app.py", f"npw = '{PASSWORD}'"),
    ("notes.txt", "pw = get_pw()"),
    ("analysis.ipynb", '  "source": ["password = os.environ[\\"DB_PASSWORD\\"]\\n"],'),
    # a comment, substitutions and calls, unquoted
    ("config.yml", "db_password: #changeme"),
    ("deploy.sh", "DB_PASSWORD=$(cat /run/secrets/db)"),
    ("config.yml", "password: get_password()"),
    ("app.conf", 'PASSWORD=os.getenv("DB_PASSWORD")'),
    ("config.yml", "password: load(vault);"),
    ("deploy.sh", "export PASSWORD=$1; run"),
    ("app.js", "const password = getPassword(), user = x;"),
    ("k8s/deploy.yaml", "- name: DB_PASSWORD\n  value: ${DB_PASSWORD}\n"),
    ("k8s/deploy.yaml", "- name: DB_PASSWORD\n  valueFrom:\n    secretKeyRef:\n      key: pw\n"),
    ("k8s/deploy.yaml", "- name: DB_PASSWORD\n  value: \"{{ .Values.db.password }}\"\n"),
    ("k8s/deploy.yaml", "- name: DB_PASSWORD\n  value: changeme\n"),
])
def test_names_expressions_and_other_flags_are_not_findings(scanner, path, text):
    assert scanner.scan(path, text.encode()) == []


@pytest.mark.parametrize("path,text", [
    ("password.txt", f"{PASSWORD}\n"),
    ("secrets/db_password", f"{_TOKEN}\n"),
    ("deploy/api_key.txt", f"{_HEX_TOKEN}\n"),
    ("config/master.key", _HEX_TOKEN),
    ("token", f"  '{_TOKEN}'\n"),
    ("vault_pass", f"{PASSWORD}\n"),
    ("passwords.txt", f"admin hunter2\n{PASSWORD}\n"),
    (".pgpass", f"db.example.org:5432:app:admin:{PASSWORD}\n"),
])
def test_a_file_named_for_a_secret_holding_one_alone_on_a_line_is_held(scanner, path, text):
    assert [f.rule for f in scanner.scan(path, text.encode())] == [RuleId.SECRET_NAMED_FILE]


@pytest.mark.parametrize("path,text", [
    ("secrets.py", f"{PASSWORD}\n"),  # code: named so for what it handles
    ("password.example", f"{PASSWORD}\n"),
    ("password.txt", "changeme\n"),
    ("tokens.txt", "tokenize\nparse\n"),
    ("passport.txt", f"{PASSWORD}\n"),
    ("pass.ini", "[global]\nresult_code = PASS\nresult_output = not shown\n"),
    ("Secret.yaml", "title: Secret export schema\nrequired:\n- secretVersion\n"),
    ("secrets.txt", "\n".join(f"line {n} {_TOKEN}" for n in range(12))),
])
def test_files_named_for_secrets_without_one_alone_on_a_line_are_clean(scanner, path, text):
    assert scanner.scan(path, text.encode()) == []


@pytest.mark.parametrize("path", [".env.example", "config/.env.sample", ".env.template",
                                  ".env.dist"])
def test_env_templates_are_not_held_by_name(scanner, path):
    assert scanner.filename_findings(path) == []


@pytest.mark.parametrize(
    "path,rule",
    [
        (".env", RuleId.ENV_FILE),
        ("app/.env.local", RuleId.ENV_FILE),
        (".env.production", RuleId.ENV_FILE),
        ("id_dsa", RuleId.SSH_PRIVATE_KEY_FILE),
        ("home/.ssh/id_ecdsa", RuleId.SSH_PRIVATE_KEY_FILE),
        ("certs/store.pfx", RuleId.KEYSTORE_FILE),
        ("app/release.keystore", RuleId.KEYSTORE_FILE),
        ("deploy/putty.ppk", RuleId.SSH_PRIVATE_KEY_FILE),
        ("krb/service.keytab", RuleId.KEYSTORE_FILE),
        ("vault/passwords.kdbx", RuleId.KEYSTORE_FILE),
        ("credentials-prod.json", RuleId.CREDENTIALS_FILE),
        (".git-credentials", RuleId.GIT_CREDENTIALS_FILE),
    ],
)
def test_filename_rules(scanner, path, rule):
    assert [f.rule for f in scanner.filename_findings(path)] == [rule]


@pytest.mark.parametrize("path", ["id_rsa.pub", "id_ed25519.pub", "environment.py", "server.pem",
                                  "service-account.json", "credentials.yaml", "docs/env.md"])
def test_names_that_are_not_secret_by_themselves(scanner, path):
    assert scanner.filename_findings(path) == []


def test_service_account_json_without_a_key_is_not_held(scanner):
    assert scanner.scan("service-account-ci.json",
                        b'{"type": "service_account", "client_email": "x"}') == []


@pytest.mark.parametrize(
    "path,text",
    [
        (".npmrc", "//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n"),
        (".npmrc", "registry=https://npm.example.org/\nalways-auth=true\n"),
        (".pypirc", "[pypi]\nusername = __token__\n"),
        (".pypirc", "[pypi]\npassword = ${PYPI_PASSWORD}\n"),
        (".netrc", "machine example.org login deploy\n"),
    ],
)
def test_package_manager_config_without_a_credential_is_clean(scanner, path, text):
    assert scanner.scan(path, text.encode()) == []


def test_content_profile_separates_only_what_changes_the_rules():
    assert content_profile("a/x.txt") == content_profile("b/y.md")
    assert content_profile("a/x.py") != content_profile("a/x.txt")
    assert content_profile("web/.npmrc") != content_profile("web/npmrc")
    assert content_profile("k/service-account-1.json") != content_profile("k/other.json")


# --- content edge cases ----------------------------------------------------------------------

_r = Randomness(41)
GITHUB = ("gh" + "p_" + _r.mixed(ALNUM, 36)).encode()
AWS_SECRET = _r.mixed(ALNUM + "+/", 40).encode()


def rules_and_lines(findings):
    return [(f.rule, f.line) for f in findings]


def test_latin1_text_is_scanned_and_columns_count_bytes(scanner):
    data = ("# Konfiguration für den Server, Straße 5\n".encode("latin-1") + b"jeton = \xe9"
            + GITHUB + b"\n")
    (finding,) = scanner.scan("conf/server.properties", data)
    assert (finding.rule, finding.line, finding.column) == (RuleId.GITHUB_TOKEN, 2, 10)


def test_invalid_utf8_around_a_secret_does_not_hide_it(scanner):
    data = b"\xff\xc3(\x80 garbage \xed\xa0\x80\n" + b"aws_secret_access_key=" + AWS_SECRET \
        + b"\n\xfe"
    assert rules_and_lines(scanner.scan("creds.txt", data)) == [(RuleId.AWS_SECRET_ACCESS_KEY, 2)]


ACCESS_KEY_ID = ("AKIA" + _r.text(corpus.BASE32_UPPER, 16)).encode()
WINDOWS_SCRIPT = (b"# deploy\r\n$env:AWS_ACCESS_KEY_ID = '" + ACCESS_KEY_ID
                  + b"'\r\n$env:AWS_SECRET_ACCESS_KEY = '" + AWS_SECRET
                  + b"'\r\n$token = '" + GITHUB + b"'\r\n").decode()


@pytest.mark.parametrize("encoding,bom", [
    ("utf-16-le", b"\xff\xfe"), ("utf-16-le", b""), ("utf-16-be", b"\xfe\xff"),
    ("utf-16-be", b""),
])
def test_a_utf16_file_is_scanned_as_its_text(scanner, encoding, bom):
    """PowerShell, regedit and Notepad write UTF-16: every other byte NUL, so it read as
    binary and its tokens were pushed."""
    data = bom + WINDOWS_SCRIPT.encode(encoding)
    findings = scanner.scan("deploy/setup.ps1", data)
    assert rules_and_lines(findings) == [(RuleId.AWS_ACCESS_KEY_ID, 2),
                                         (RuleId.AWS_SECRET_ACCESS_KEY, 3),
                                         (RuleId.GITHUB_TOKEN, 4)]
    # a finding's column counts in the text, as in the same file saved as UTF-8
    assert [f.column for f in findings] == [
        f.column for f in scanner.scan("deploy/setup.ps1", WINDOWS_SCRIPT.encode())]


def test_a_utf16_file_over_the_size_bound_is_not_decoded(scanner, monkeypatch):
    data = WINDOWS_SCRIPT.encode("utf-16")
    monkeypatch.setattr(scanner_module, "MAX_UTF16_BYTES", len(data) - 1)
    assert scanner.scan("deploy/setup.ps1", data) == []


def test_binary_data_with_every_other_byte_nul_is_not_read_as_utf16(scanner):
    """16-bit numbers below 256 alternate with NULs too, but decode to control characters."""
    samples = b"".join(n.to_bytes(2, "little") for n in range(1, 256)) * 4
    data = samples + ("token = " + GITHUB.decode()).encode("utf-16-le")
    assert scanner.scan("audio/take1.raw", data) == []


def test_crlf_line_endings(scanner):
    data = b"a = 1\r\nb = 2\r\ntoken = '" + GITHUB + b"'\r\n"
    (finding,) = scanner.scan("win.ini", data)
    assert (finding.line, finding.column) == (3, 10)


def test_binary_data_is_checked_for_private_keys_only(scanner, tmp_path):
    key = KeyMaker(tmp_path).pkcs8()
    blob = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4
    assert is_binary(blob)
    assert scanner.scan("bin/tool", blob + b"token=" + GITHUB + b"\x00") == []
    assert rules_and_lines(scanner.scan("bin/tool", blob + b"\n" + key + b"\x00")) == [
        (RuleId.PRIVATE_KEY, blob.count(b"\n") + 2)]


def test_nul_after_the_probe_window_is_text(scanner):
    data = b"x" * 8000 + b"\x00\ntoken " + GITHUB + b"\n"
    assert not is_binary(data)
    assert rules_and_lines(scanner.scan("data.txt", data)) == [(RuleId.GITHUB_TOKEN, 2)]


def test_der_private_key_file_is_held_by_name_and_form(scanner, tmp_path):
    pem = KeyMaker(tmp_path).pkcs8()
    der = subprocess.run(["openssl", "pkey", "-outform", "DER"], input=pem, capture_output=True,
                         check=True).stdout
    assert [f.rule for f in scanner.scan("certs/client.key", der)] == [RuleId.KEYSTORE_FILE]
    assert scanner.scan("certs/notes.key", b"0 keys here, see README\n") == []


def test_five_megabyte_file(scanner):
    body = stdlib_text(100_000) * 50
    assert scanner.scan("big/corpus.py", body) == []
    (finding,) = scanner.scan("big/corpus.py", body + b"\nAPI = '" + GITHUB + b"'\n")
    assert finding.line == body.count(b"\n") + 2


def test_a_piece_of_a_large_blob_reports_lines_of_the_whole(scanner):
    (finding,) = scanner.scan("big.txt", b"a\nb '" + GITHUB + b"'\n", first_line=1001)
    assert (finding.line, finding.column) == (1002, 4)


def test_secret_deep_in_a_long_minified_line(scanner):
    bundle = synthetic_minified_js(Randomness(42), size=120_000).rstrip(b"\n")
    assert b"\n" not in bundle[:100_000]
    inserted = bundle[:60_000] + b';var c={aws_secret_access_key:"' + AWS_SECRET + b'"};' \
        + bundle[60_000:]
    (finding,) = scanner.scan("static/app.min.js", inserted)
    assert finding.rule is RuleId.AWS_SECRET_ACCESS_KEY
    assert (finding.line, finding.column) == (1, inserted.index(AWS_SECRET) + 1)


@pytest.mark.parametrize("data", [b"", b"\n", b"\x00", b"-----BEGIN"])
def test_degenerate_inputs(scanner, data):
    assert scanner.scan("empty", data) == []


# --- allowlists ------------------------------------------------------------------------------

_a = Randomness(21)
GH = "gh" + "p_" + _a.mixed(ALNUM, 36)
STRIPE = "sk" + "_live_" + _a.mixed(ALNUM, 30)


@pytest.mark.parametrize(
    "line",
    [
        f'TOKEN = "{GH}"  # gitsieve:allow',
        f'const token = "{GH}"; // gitsieve:allow',
        f"token: {GH} # gitsieve:allow=github-token",
        f'<meta name="t" content="{GH}"> <!-- gitsieve:allow=github-token -->',
        f"SELECT '{GH}'; -- gitsieve:allow=jwt,github-token",
        f"/* gitsieve:allow */ token = '{GH}'",
    ],
)
def test_inline_marker_on_the_line_allows(scanner, line):
    assert scanner.scan("src/app.txt", line.encode() + b"\n") == []


def test_inline_marker_is_ignored_when_switched_off():
    strict = SecretScanner(key=KEY, inline_allow=False)
    assert [f.rule for f in strict.scan("a.py", f'T = "{GH}"  # gitsieve:allow\n'.encode())] \
        == [RuleId.GITHUB_TOKEN]


def test_inline_marker_for_another_rule_does_not_allow(scanner):
    findings = scanner.scan("src/app.py", f'TOKEN = "{GH}"  # gitsieve:allow=jwt\n'.encode())
    assert [f.rule for f in findings] == [RuleId.GITHUB_TOKEN]


def test_inline_marker_only_covers_its_own_line(scanner):
    text = f"# gitsieve:allow\na = '{GH}'\nb = '{STRIPE}'  # gitsieve:allow\n"
    assert rules_and_lines(scanner.scan("src/app.py", text.encode())) == [
        (RuleId.GITHUB_TOKEN, 2)]


def test_allowlist_file_entries(scanner):
    (github_finding,) = scanner.scan("docs/a.md", GH.encode())
    sendgrid = "SG." + _a.mixed(ALNUM, 22) + "." + _a.mixed(ALNUM, 43)
    allowlist = Allowlist.parse(
        "# releases, one per line\n"
        f"{github_finding.fingerprint.upper()}   # the demo token in the docs\n"
        "path:tests/fixtures/**\n"
        "rule:stripe-secret-key billing/*.rb\n"
        "rule:sendgrid-api-key\n",
        known_rule_ids=scanner.known_rule_ids,
    )
    assert [e.kind for e in allowlist.entries] == [EntryKind.FINGERPRINT, EntryKind.PATH,
                                                   EntryKind.RULE, EntryKind.RULE]
    (elsewhere,) = scanner.scan("src/other.py", f"t = '{GH}'".encode())
    assert allowlist.allowing(elsewhere).origin == ".gitsieve-allow:2"
    other_token = scanner.scan("src/other.py", ("gh" + "p_" + _a.mixed(ALNUM, 36)).encode())
    assert allowlist.filter(other_token) == other_token
    assert allowlist.filter(scanner.scan("tests/fixtures/deep/.env",
                                         f"T={STRIPE}\n".encode())) == []
    assert allowlist.filter(scanner.scan("billing/pay.rb", f"k = '{STRIPE}'".encode())) == []
    assert [f.rule for f in allowlist.filter(scanner.scan("shop/pay.rb",
                                                          f"k = '{STRIPE}'".encode()))] \
        == [RuleId.STRIPE_SECRET_KEY]
    # rule: may name a detector id, which covers that format only
    assert allowlist.filter(scanner.scan("mail.py", f"k = '{sendgrid}'".encode())) == []
    assert allowlist.entries[3].render() == ".gitsieve-allow:5: rule:sendgrid-api-key"


def test_rule_entry_covers_size_findings_too():
    allowlist = Allowlist.parse("rule:oversized-new-file data/**\n")
    held = oversized("data/train.parquet", 60 * MIB, 10 * MIB, head_size=None, lfs_routed=False)
    assert allowlist.filter([held]) == []


def test_every_bad_line_is_reported_with_file_and_line():
    text = "\n".join(["# fine", "abc123", "path:", "rule:no-such-rule", "rule:jwt a/** b/**",
                      "path:src/[abc", "path:!secrets/**", "path:../outside", "allow everything",
                      "path:tests/**"])
    with pytest.raises(AllowlistError) as raised:
        Allowlist.parse(text, source="ws/.gitsieve-allow")
    problems = raised.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"ws/.gitsieve-allow:{n}"
                                                       for n in range(2, 10)]
    assert "32 hex characters" in problems[0]
    assert "unknown rule id 'no-such-rule'" in problems[2]


def test_a_bad_allowlist_line_is_never_quoted():
    """An allowlist that is by mistake a link to a credentials file printed its secrets."""
    key = "AKIA" + "Q" * 16
    with pytest.raises(AllowlistError) as raised:
        Allowlist.parse(f"[default]\naws_access_key_id = {key}\n", source="ws/.gitsieve-allow")
    assert key not in str(raised.value) and "[default]" not in str(raised.value)
    assert "ws/.gitsieve-allow:2" in str(raised.value)


def test_detector_ids_need_the_scanners_known_ids(scanner):
    with pytest.raises(AllowlistError, match="unknown rule id 'sendgrid-api-key'"):
        Allowlist.parse("rule:sendgrid-api-key")
    assert Allowlist.parse("rule:sendgrid-api-key", known_rule_ids=scanner.known_rule_ids)


@pytest.mark.parametrize(
    "glob,path,expected",
    [
        ("*.pem", "a/b/server.pem", True),
        ("*.pem", "server.pem.txt", False),
        ("tests/fixtures", "tests/fixtures/keys/a.pem", True),
        ("tests/fixtures", "src/tests/fixtures/a.pem", False),
        ("fixtures", "src/tests/fixtures/a.pem", True),
        ("/docs/*.md", "docs/a.md", True),
        ("docs/*.md", "docs/sub/a.md", False),
        ("docs/**/*.md", "docs/sub/deeper/a.md", True),
        ("docs/**/*.md", "docs/a.md", True),
        ("key[0-9].txt", "keyA.txt", False),
        ("key[!0-9].txt", "keyA.txt", True),
    ],
)
def test_glob_semantics_follow_gitignore(glob, path, expected):
    assert bool(compile_glob(glob).fullmatch(path)) is expected


def test_set_aside_matches_are_counted_not_shown(scanner):
    before = scanner.stats.copy()
    scanner.scan("src/a.py", f'T = "{GH}"  # gitsieve:allow\nK = "AKIAIOSFODNN7EXAMPLE"\n'.encode())
    assert scanner.stats["inline_allowed"] == before["inline_allowed"] + 1
    assert scanner.stats["placeholders"] > before["placeholders"]


# --- fingerprints and blob ids ---------------------------------------------------------------

TOKEN = "np" + "m_" + Randomness(31).mixed(ALNUM, 36)


def fingerprint_of(scanner, path, text):
    (finding,) = scanner.scan(path, text.encode())
    return finding.fingerprint


def test_fingerprint_recognises_the_same_secret_again_and_is_keyed(scanner):
    first = fingerprint_of(scanner, "a/publish.sh", f"npm token {TOKEN}\n")
    assert first == fingerprint_of(SecretScanner(key=KEY), "c.txt", TOKEN)
    assert first != fingerprint_of(SecretScanner(key=b"another installation key"), "c", TOKEN)
    assert first not in (hashlib.sha256(TOKEN.encode()).hexdigest(),
                         hashlib.sha1(TOKEN.encode()).hexdigest())
    assert first == hmac.new(KEY, b"secret\0" + TOKEN.encode(), hashlib.sha256).hexdigest()[:32]


def test_key_is_checked_and_never_shown():
    with pytest.raises(ValueError, match="at least 16"):
        Fingerprinter(b"short")
    assert KEY.hex() not in repr(Fingerprinter(KEY))


@pytest.mark.parametrize("object_format", ["sha1", "sha256"])
def test_git_blob_id_matches_git(tmp_path, object_format):
    subprocess.run(["git", "init", "-q", f"--object-format={object_format}", str(tmp_path)],
                   check=True)
    for data in (b"", b"hello\n", bytes(range(256)) * 40):
        expected = subprocess.run(["git", "-C", str(tmp_path), "hash-object", "--stdin"],
                                  input=data, capture_output=True, check=True).stdout
        assert git_blob_id(data, object_format) == expected.decode().strip()


# --- the size guard --------------------------------------------------------------------------


def test_size_guard():
    limit = 10 * MIB
    held = oversized("data/dump.bin", 60 * MIB, limit, head_size=None, lfs_routed=False)
    assert held.rule is RuleId.OVERSIZED_NEW_FILE and held.kind is FindingKind.SIZE
    assert 'git lfs track "*.bin"' in held.description
    assert "60.0 MiB > 10.0 MiB" in held.render()
    assert oversized("data/small.bin", 5 * MIB, limit, head_size=None, lfs_routed=False) is None
    assert oversized("media/film.mp4", 600 * MIB, limit, head_size=None, lfs_routed=True) is None
    grown = oversized("logs/app.log", 11 * MIB, limit, head_size=4 * MIB, lfs_routed=False)
    assert grown.rule is RuleId.OVERSIZED_GROWTH
    assert oversized("big.psd", 70 * MIB, limit, head_size=60 * MIB, lfs_routed=False) is None
    assert lfs_track_command("bin/tool") == 'git lfs track "bin/tool"'


def test_an_anchors_region_is_its_line_or_a_window_in_a_long_line():
    """The region is found with bounded searches (no rescan of a long line from each of its
    anchors); it must equal the plain definition: the whole line, or in a line over
    LONG_LINE bytes the window around the anchor, cut at the line's ends."""

    def plain(data: bytes, position: int) -> tuple[int, int]:
        start = data.rfind(b"\n", 0, position) + 1
        end = data.find(b"\n", position)
        end = len(data) if end < 0 else end
        if end - start > scanner_module.LONG_LINE:
            return (max(start, position - scanner_module.WINDOW_BEFORE),
                    min(end, position + scanner_module.WINDOW_AFTER))
        return start, end

    rng = random.Random(7)
    for _ in range(400):
        size = rng.choice([1, 50, 4096, 4097, 4200, 12000])
        newline_share = rng.choice([0.0, 0.0002, 0.002, 0.05])
        data = bytes(10 if rng.random() < newline_share else 97 for _ in range(size))
        for position in {0, size - 1, rng.randrange(size), rng.randrange(size)}:
            assert scanner_module._region(data, position) == plain(data, position)
