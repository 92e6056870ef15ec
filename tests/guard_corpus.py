"""The guard's test corpus: planted secrets and benign look-alikes (not a test module).

Every secret is generated at run time (random strings in the provider's format, real
keys from openssl, ssh-keygen and gpg), so no token-shaped literal sits in this
repository for a push-protection scanner, or gitsieve's own guard, to trip over.
"""

import base64
import glob
import hashlib
import hmac
import json
import os
import random
import string
import struct
import subprocess
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

UPPER = string.ascii_uppercase
LOWER = string.ascii_lowercase
DIGITS = string.digits
ALNUM = UPPER + LOWER + DIGITS
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
BASE32_UPPER = UPPER + "234567"


@dataclass(frozen=True)
class Planted:
    """A file holding one secret: ``secret`` must be reported under ``rule`` yet never shown.

    ``encoding`` is how ``content`` is written: a finding's line and column count in its text."""

    kind: str
    path: str
    content: bytes
    secret: bytes
    rule: str
    encoding: str = "utf-8"


@dataclass(frozen=True)
class Benign:
    """A file that looks random but holds nothing secret."""

    kind: str
    path: str
    content: bytes


class Randomness:
    """Seeded random strings, so a failing case can be replayed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def text(self, alphabet: str, length: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(length))

    def mixed(self, alphabet: str, length: int) -> str:
        """Like text(), but holding every character class of ``alphabet`` (as real tokens do)."""
        classes = [
            cls for cls in (str.isupper, str.islower, str.isdigit) if any(map(cls, alphabet))
        ]
        while True:
            value = self.text(alphabet, length)
            if all(any(map(cls, value)) for cls in classes):
                return value

    def bytes(self, length: int) -> bytes:
        return bytes(self.rng.getrandbits(8) for _ in range(length))


def _run(*argv: str, cwd: Path, env: dict | None = None) -> bytes:
    return subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True).stdout


class KeyMaker:
    """Real private keys and certificates, made with the system's tools in ``workdir``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def openssl_traditional(self, algorithm: str, *options: str) -> bytes:
        key = _run("openssl", "genpkey", "-algorithm", algorithm, *options, cwd=self.workdir)
        return subprocess.run(
            ["openssl", "pkey", "-traditional"], input=key, check=True, capture_output=True
        ).stdout

    def dsa_traditional(self) -> bytes:
        _run(
            "openssl",
            "genpkey",
            "-genparam",
            "-algorithm",
            "DSA",
            "-pkeyopt",
            "dsa_paramgen_bits:1024",
            "-out",
            "dsaparam.pem",
            cwd=self.workdir,
        )
        key = _run("openssl", "genpkey", "-paramfile", "dsaparam.pem", cwd=self.workdir)
        return subprocess.run(
            ["openssl", "pkey", "-traditional"], input=key, check=True, capture_output=True
        ).stdout

    def pkcs8(self) -> bytes:
        return _run("openssl", "genpkey", "-algorithm", "ed25519", cwd=self.workdir)

    def pkcs8_encrypted(self) -> bytes:
        return _run(
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-aes256",
            "-pass",
            "pass:correct-horse",
            cwd=self.workdir,
        )

    def ssh_keypair(self, key_type: str, name: str) -> tuple[bytes, bytes]:
        target = self.workdir / name
        for stale in (target, target.with_name(name + ".pub")):
            stale.unlink(missing_ok=True)
        _run(
            "ssh-keygen",
            "-q",
            "-t",
            key_type,
            "-N",
            "",
            "-C",
            "person@laptop",
            "-f",
            str(target),
            cwd=self.workdir,
        )
        return target.read_bytes(), (self.workdir / (name + ".pub")).read_bytes()

    def pgp_private_block(self) -> bytes:
        home = tempfile.mkdtemp(prefix="gnupg-", dir=self.workdir)
        env = dict(os.environ, GNUPGHOME=home)
        try:
            _run(
                "gpg",
                "--batch",
                "--passphrase",
                "",
                "--quick-gen-key",
                "Test Person <t@example.org>",
                "ed25519",
                "sign",
                "never",
                cwd=self.workdir,
                env=env,
            )
            return _run(
                "gpg",
                "--batch",
                "--armor",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--export-secret-keys",
                cwd=self.workdir,
                env=env,
            )
        finally:
            # gpg starts an agent per home; stop it so no process outlives the corpus.
            _run("gpgconf", "--kill", "gpg-agent", cwd=self.workdir, env=env)

    def certificate(self) -> bytes:
        _run(
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "cert.key",
            "-out",
            "cert.pem",
            "-days",
            "30",
            "-subj",
            "/CN=example.org",
            cwd=self.workdir,
        )
        return (self.workdir / "cert.pem").read_bytes()


def pem_body(pem: bytes) -> bytes:
    """The first full base64 line of a PEM block's body: key material a finding must never show.

    One line, because a key inside JSON has its lines joined by an escaped newline."""
    lines = pem.strip().splitlines()
    body = [line for line in lines[1:-1] if len(line) >= 60 and b":" not in line]
    return body[0]


def _jwt(r: Randomness) -> str:
    def seg(obj: dict) -> str:
        return (
            base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode())
            .rstrip(b"=")
            .decode()
        )

    signing_input = (
        seg({"alg": "HS256", "typ": "JWT"})
        + "."
        + seg({"sub": r.text(DIGITS, 10), "name": "Ada", "iat": 1716239022, "role": "admin"})
    )
    signature = hmac.new(r.bytes(32), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def _pypi_token(r: Randomness) -> str:
    macaroon = b"\x02\x01\x08pypi.org\x02\x01\x04" + r.bytes(110)
    return "pypi-" + base64.urlsafe_b64encode(macaroon).rstrip(b"=").decode()


def planted_secrets(workdir: Path, seed: int = 12) -> list[Planted]:
    """One file per secret kind, each written the way people really leak it."""
    r = Randomness(seed)
    keys = KeyMaker(workdir)
    planted: list[Planted] = []

    def add(kind: str, path: str, template: str, secret: str, rule: str) -> None:
        planted.append(
            Planted(kind, path, template.format(secret=secret).encode(), secret.encode(), rule)
        )

    add(
        "aws access key id",
        "deploy/settings.py",
        'import os\n\nREGION = "eu-west-1"\nAWS_ACCESS_KEY_ID = "{secret}"\n',
        "AKIA" + r.text(BASE32_UPPER, 16),
        "aws-access-key-id",
    )
    add(
        "aws secret access key",
        "config/aws.ini",
        "[default]\nregion = us-east-1\naws_secret_access_key = {secret}\n",
        r.mixed(B64, 40),
        "aws-secret-access-key",
    )
    add(
        "gcp api key",
        "web/maps.js",
        'const mapsKey = "{secret}";\nloadMaps(mapsKey);\n',
        "AIza" + r.mixed(B64URL, 35),
        "gcp-api-key",
    )
    add(
        "gcp oauth client secret",
        "config/oauth.yaml",
        "google:\n  client_id: 1234.apps.googleusercontent.com\n  client_secret: {secret}\n",
        "GOCSPX-" + r.mixed(B64URL, 28),
        "gcp-oauth-client-secret",
    )
    add(
        "azure storage connection string",
        "appsettings.json",
        '{{"Storage": "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={secret};'
        'EndpointSuffix=core.windows.net"}}\n',
        r.mixed(B64, 86) + "==",
        "azure-storage-account-key",
    )
    add(
        "azure ad client secret",
        "infra/app.tf",
        'resource "x" "y" {{\n  client_id     = "0f1e2d3c"\n  client_secret = "{secret}"\n}}\n',
        r.text(ALNUM, 3) + r.text(DIGITS, 1) + "Q~" + r.mixed(ALNUM + "_~.-", 34),
        "azure-ad-client-secret",
    )
    add(
        "azure sas token",
        "scripts/upload.sh",
        'curl -T build.zip "https://acme.blob.core.windows.net/drop/build.zip?sv=2022-11-02&ss=b&srt=o'
        '&sp=rwc&se=2030-01-01T00:00:00Z&spr=https&sig={secret}"\n',
        r.mixed(ALNUM, 39) + "%2B" + r.mixed(ALNUM, 3) + "%3D",
        "azure-sas-token",
    )

    rsa = keys.openssl_traditional("RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    planted.append(
        Planted("rsa private key", "certs/server.key", rsa, pem_body(rsa), "private-key")
    )
    ec = keys.openssl_traditional("EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    planted.append(Planted("ec private key", "notes/ec.txt", ec, pem_body(ec), "private-key"))
    dsa = keys.dsa_traditional()
    planted.append(Planted("dsa private key", "legacy/dsa.txt", dsa, pem_body(dsa), "private-key"))
    pkcs8 = keys.pkcs8()
    planted.append(
        Planted("pkcs8 private key", "keys/signing.txt", pkcs8, pem_body(pkcs8), "private-key")
    )
    encrypted = keys.pkcs8_encrypted()
    planted.append(
        Planted(
            "encrypted private key",
            "keys/encrypted.txt",
            encrypted,
            pem_body(encrypted),
            "private-key",
        )
    )
    openssh, _ = keys.ssh_keypair("ed25519", "deploy_key")
    planted.append(
        Planted(
            "openssh private key",
            "docs/deploy-key.md",
            b"Deploy key:\n\n```\n" + openssh + b"```\n",
            pem_body(openssh),
            "private-key",
        )
    )
    pgp = keys.pgp_private_block()
    planted.append(
        Planted("pgp private key block", "backup/signing.asc", pgp, pem_body(pgp), "private-key")
    )
    service_account_key = keys.pkcs8()
    service_account = json.dumps(
        {
            "type": "service_account",
            "project_id": "acme-prod",
            "private_key_id": r.text(HEX, 40),
            "private_key": service_account_key.decode(),
            "client_email": "ci@acme-prod.iam.gserviceaccount.com",
        },
        indent=2,
    ).encode()
    planted.append(
        Planted(
            "gcp service account json",
            "deploy/gcp.json",
            service_account,
            pem_body(service_account_key),
            "private-key",
        )
    )

    add(
        "github classic pat",
        "docs/notes.md",
        "# Notes\n\nFor the API use token {secret} until Friday.\n",
        "gh" + "p_" + r.mixed(ALNUM, 36),
        "github-token",
    )
    add(
        "github oauth token",
        "tools/oauth.cfg",
        "[github]\ntoken={secret}\n",
        "gh" + "o_" + r.mixed(ALNUM, 36),
        "github-token",
    )
    add(
        "github app installation token",
        "ci/env.sh",
        "export GH_TOKEN={secret}\n",
        "gh" + "s_" + r.mixed(ALNUM, 36),
        "github-token",
    )
    add(
        "github refresh token",
        "ci/refresh.txt",
        "refresh: {secret}\n",
        "gh" + "r_" + r.mixed(ALNUM, 76),
        "github-token",
    )
    add(
        "github fine-grained pat",
        "scripts/release.py",
        'HEADERS = {{"Authorization": "Bearer {secret}"}}\n',
        "github" + "_pat_" + r.mixed(ALNUM, 22) + "_" + r.mixed(ALNUM, 59),
        "github-token",
    )
    add(
        "gitlab pat",
        "ci/gitlab.yml",
        "variables:\n  TOKEN: {secret}\n",
        "gl" + "pat-" + r.mixed(B64URL, 20),
        "gitlab-token",
    )
    add(
        "gitlab runner token",
        "runner/config.toml",
        '[[runners]]\n  token = "{secret}"\n',
        "gl" + "rt-" + r.mixed(B64URL, 20),
        "gitlab-token",
    )
    add(
        "slack bot token",
        "bot/app.js",
        "const slack = new WebClient('{secret}');\n",
        "xo" + "xb-" + r.text(DIGITS, 12) + "-" + r.text(DIGITS, 13) + "-" + r.mixed(ALNUM, 24),
        "slack-token",
    )
    add(
        "slack user token",
        "bot/user.txt",
        "{secret}\n",
        "xo"
        + "xp-"
        + r.text(DIGITS, 12)
        + "-"
        + r.text(DIGITS, 12)
        + "-"
        + r.text(DIGITS, 13)
        + "-"
        + r.text(HEX, 32),
        "slack-token",
    )
    add(
        "slack webhook",
        "alerts/notify.py",
        'WEBHOOK = "{secret}"\n',
        "https://hooks.slack.com/services/T"
        + r.text(UPPER + DIGITS, 8)
        + "/B"
        + r.text(UPPER + DIGITS, 10)
        + "/"
        + r.mixed(ALNUM, 24),
        "slack-webhook",
    )
    add(
        "stripe secret key",
        "billing/config.rb",
        "Stripe.api_key = '{secret}'\n",
        "sk" + "_live_" + r.mixed(ALNUM, 99),
        "stripe-secret-key",
    )
    add(
        "stripe restricted key",
        "billing/.stripe",
        "key: {secret}\n",
        "rk" + "_live_" + r.mixed(ALNUM, 24),
        "stripe-secret-key",
    )
    add(
        "openai project key",
        "agent/main.py",
        'client = OpenAI(api_key="{secret}")\n',
        "sk-" + "proj-" + r.mixed(B64URL, 74) + "T3Blbk" + "FJ" + r.mixed(B64URL, 74),
        "openai-api-key",
    )
    add(
        "openai legacy key",
        "agent/legacy.env.txt",
        "key {secret}\n",
        "sk-" + r.mixed(ALNUM, 20) + "T3Blbk" + "FJ" + r.mixed(ALNUM, 20),
        "openai-api-key",
    )
    add(
        "anthropic api key",
        "agent/claude.ts",
        'const anthropic = new Anthropic({{ apiKey: "{secret}" }});\n',
        "sk-" + "ant-api03-" + r.mixed(B64URL, 93) + "AA",
        "anthropic-api-key",
    )
    add(
        "hugging face token",
        "ml/train.ipynb",
        '{{"cells": [{{"source": ["login(\\"{secret}\\")"]}}]}}\n',
        "hf" + "_" + r.mixed(UPPER + LOWER, 34),
        "huggingface-token",
    )
    add(
        "groq api key",
        "ml/groq.py",
        'Groq(api_key="{secret}")\n',
        "gs" + "k_" + r.mixed(ALNUM, 52),
        "ai-provider-key",
    )
    add(
        "npm token",
        "web/publish.sh",
        "npm config set //registry.npmjs.org/:_authToken {secret}\n",
        "np" + "m_" + r.mixed(ALNUM, 36),
        "npm-token",
    )
    add(
        "pypi token",
        "tools/upload.sh",
        "twine upload -u __token__ -p {secret} dist/*\n",
        _pypi_token(r),
        "pypi-token",
    )
    add("jwt", "tests/fixtures/session.txt", "Authorization: Bearer {secret}\n", _jwt(r), "jwt")
    add(
        "url with password",
        "docker-compose.yml",
        "services:\n  app:\n    environment:\n      DATABASE_URL: postgres://app:{secret}@db.internal:5432/app\n",
        r.mixed(ALNUM, 18),
        "url-password",
    )
    add(
        "sendgrid key",
        "mail/send.py",
        'sg = SendGridAPIClient("{secret}")\n',
        "SG." + r.mixed(B64URL, 22) + "." + r.mixed(B64URL, 43),
        "provider-token",
    )
    add(
        "twilio auth token",
        "sms/config.py",
        'TWILIO_AUTH_TOKEN = "{secret}"\n',
        r.text(HEX, 32),
        "twilio-auth-token",
    )
    add(
        "mailgun key",
        "mail/mailgun.env.txt",
        "MAILGUN_API_KEY={secret}\n",
        "key-" + r.text(HEX, 32),
        "provider-token",
    )
    add(
        "password assignment",
        "app/settings.py",
        'DATABASES = {{"default": {{"USER": "app", "PASSWORD": "{secret}"}}}}\n',
        r.mixed(ALNUM, 10) + "!" + r.mixed(ALNUM, 4),
        "password-assignment",
    )
    add(
        "age secret key",
        "secrets/age.txt",
        "# created: 2024-05-01\n{secret}\n",
        "AGE-" + "SECRET-KEY-1" + r.text("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58),
        "provider-token",
    )
    add(
        "digitalocean token",
        "infra/do.sh",
        "doctl auth init -t {secret}\n",
        "do" + "p_v1_" + r.text(HEX, 64),
        "provider-token",
    )
    add(
        "shopify token",
        "shop/api.rb",
        "ShopifyAPI::Context.setup(api_secret_key: '{secret}')\n",
        "shp" + "at_" + r.text(HEX, 32),
        "provider-token",
    )
    add(
        "databricks token",
        "notebooks/run.py",
        'host_token = "{secret}"\n',
        "da" + "pi" + r.text(HEX, 32),
        "provider-token",
    )
    add(
        "google oauth access token",
        "scripts/gcloud.sh",
        'curl -H "Authorization: Bearer {secret}" https://storage.googleapis.com/\n',
        "ya" + "29." + r.mixed(B64URL, 120),
        "provider-token",
    )
    add(
        "gitlab deploy token",
        "deploy/gitlab.env.txt",
        "CI_DEPLOY_PASSWORD={secret}\n",
        "gl" + "dt-" + r.mixed(ALNUM, 20),
        "gitlab-token",
    )
    add(
        "slack app-level token",
        "bot/socket.py",
        'APP_TOKEN = "{secret}"\n',
        "xa" + "pp-1-A" + r.text(UPPER + DIGITS, 10) + "-" + r.text(DIGITS, 13) + "-"
        + r.text(HEX, 64),
        "slack-token",
    )
    add(
        "huggingface org token",
        "ml/org.txt",
        "{secret}\n",
        "api" + "_org_" + r.mixed(UPPER + LOWER, 34),
        "huggingface-token",
    )
    add(
        "xai api key",
        "agent/grok.py",
        'client = Client(api_key="{secret}")\n',
        "xa" + "i-" + r.mixed(ALNUM, 80),
        "ai-provider-key",
    )
    add(
        "openrouter key",
        "agent/router.ts",
        "const key = '{secret}';\n",
        "sk-" + "or-v1-" + r.text(HEX, 64),
        "ai-provider-key",
    )
    add(
        "replicate token",
        "ml/replicate.sh",
        "export REPLICATE_API_TOKEN={secret}\n",
        "r" + "8_" + r.mixed(ALNUM, 37),
        "ai-provider-key",
    )
    add(
        "perplexity key",
        "agent/search.py",
        'PPLX = "{secret}"\n',
        "pp" + "lx-" + r.mixed(ALNUM, 48),
        "ai-provider-key",
    )
    add(
        "langsmith key",
        "agent/trace.env.txt",
        "LANGSMITH_API_KEY={secret}\n",
        "ls" + "v2_pt_" + r.text(HEX, 32) + "_" + r.text(HEX, 10),
        "ai-provider-key",
    )
    add(
        "azure service bus key",
        "infra/bus.json",
        '{{"conn": "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=send;'
        'SharedAccessKey={secret}"}}\n',
        r.mixed(B64, 43) + "=",
        "azure-storage-account-key",
    )
    add(
        "vault token",
        "ops/vault.sh",
        "VAULT_TOKEN={secret} vault kv get secret/app\n",
        "hv" + "s." + r.mixed(B64URL, 90),
        "provider-token",
    )
    add(
        "terraform cloud token",
        "ops/credentials.tfrc.txt",
        'credentials "app.terraform.io" {{ token = "{secret}" }}\n',
        r.text(LOWER + DIGITS, 14) + ".atlas" + "v1." + r.mixed(B64URL, 67),
        "provider-token",
    )
    add(
        "atlassian api token",
        "ops/jira.py",
        'JIRA = "{secret}"\n',
        "ATA" + "TT3" + r.mixed(B64URL, 180),
        "provider-token",
    )
    add(
        "telegram bot token",
        "bot/telegram.py",
        'BOT = "{secret}"\n',
        r.text(DIGITS, 10) + ":A" + "A" + r.mixed(B64URL, 33),
        "provider-token",
    )
    add(
        "linear api key",
        "ops/linear.txt",
        "{secret}\n",
        "lin" + "_api_" + r.mixed(ALNUM, 40),
        "provider-token",
    )
    add(
        "doppler token",
        "ops/doppler.sh",
        "doppler run --token {secret} -- ./serve\n",
        "dp" + ".st." + r.mixed(ALNUM, 43),
        "provider-token",
    )
    add(
        "grafana service account token",
        "ops/grafana.yaml",
        "auth:\n  token: {secret}\n",
        "gl" + "sa_" + r.mixed(ALNUM, 32) + "_" + r.text(HEX, 8),
        "provider-token",
    )
    add(
        "heroku api key",
        "ops/heroku.txt",
        "HEROKU_API_KEY {secret}\n",
        "HR" + "KU-" + r.mixed(B64URL, 60),
        "provider-token",
    )
    add(
        "mailchimp api key",
        "mail/chimp.php",
        "$mc = new MailChimp('{secret}');\n",
        r.text(HEX, 32) + "-us" + r.text(DIGITS, 2),
        "provider-token",
    )
    add(
        "postman api key",
        "ops/postman.json",
        '{{"x-api-key": "{secret}"}}\n',
        "PM" + "AK-" + r.text(HEX, 24) + "-" + r.text(HEX, 34),
        "provider-token",
    )
    add(
        "sentry user token",
        "ops/sentry.ini",
        "[auth]\ntoken={secret}\n",
        "sn" + "tryu_" + r.text(HEX, 64),
        "provider-token",
    )
    add(
        "square access token",
        "shop/square.rb",
        "client = Square::Client.new(access_token: '{secret}')\n",
        "sq" + "0atp-" + r.mixed(B64URL, 22),
        "provider-token",
    )
    add(
        "npmrc auth token",
        "web/.npmrc",
        "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken={secret}\n",
        str(uuid.UUID(int=r.rng.getrandbits(128))),
        "npmrc-credential",
    )
    add(
        "pypirc password",
        ".pypirc",
        "[distutils]\nindex-servers = private\n\n[private]\nrepository = https://pkgs.example.org/\n"
        "username = deploy\npassword = {secret}\n",
        r.mixed(ALNUM, 16),
        "pypirc-credential",
    )
    add(
        "netrc password",
        "home/.netrc",
        "machine api.example.org\n  login deploy\n  password {secret}\n",
        r.mixed(ALNUM, 16),
        "netrc-credential",
    )
    add(
        "generic api token",
        "services/client.py",
        'API_TOKEN = "{secret}"\n',
        r.mixed(ALNUM, 40),
        "token-assignment",
    )
    add(
        "signing key literal",
        "config/signing.yaml",
        "jwt:\n  signing_key: {secret}\n",
        r.mixed(B64, 43) + "=",
        "token-assignment",
    )
    add(
        "bearer token in a header",
        "scripts/call.sh",
        'curl -H "Authorization: Bearer {secret}" https://api.example.com/v1/items\n',
        r.mixed(B64URL, 48),
        "authorization-header",
    )
    add(
        "password element",
        "conf/datasource.xml",
        "<datasource>\n  <user>app</user>\n  <password>{secret}</password>\n</datasource>\n",
        r.mixed(ALNUM, 12) + "#" + r.mixed(ALNUM, 3),
        "password-assignment",
    )
    add(
        "curl basic auth",
        "scripts/report.sh",
        "curl -sf -u deploy:{secret} https://ci.example.org/api/report\n",
        r.mixed(ALNUM, 14),
        "command-line-password",
    )
    registry_password = r.mixed(ALNUM, 16)
    add(
        "docker registry auth",
        ".docker/config.json",
        '{{"auths": {{"registry.example.org": {{"auth": "{secret}"}}}}}}\n',
        base64.b64encode(f"deploy:{registry_password}".encode()).decode(),
        "registry-auth",
    )
    add(
        "sql user password",
        "db/init.sql",
        "CREATE USER app WITH ENCRYPTED PASSWORD '{secret}';\n",
        r.mixed(ALNUM, 15),
        "password-assignment",
    )
    add(
        "php define password",
        "site/wp-config.php",
        "<?php\ndefine( 'DB_PASSWORD', '{secret}' );\n",
        r.mixed(ALNUM, 11) + "%" + r.mixed(ALNUM, 4),
        "password-assignment",
    )
    add(
        "kubernetes env password",
        "k8s/deployment.yaml",
        "spec:\n  containers:\n    - name: app\n      env:\n        - name: DB_PASSWORD\n"
        "          value: \"{secret}\"\n",
        r.mixed(ALNUM, 16),
        "password-assignment",
    )
    add(
        "ansible vars password",
        "group_vars/all.yml",
        "db_host: db.internal\ndb_user: app\ndb_pass: {secret}\n",
        r.mixed(ALNUM, 11) + "#" + r.mixed(ALNUM, 4),
        "password-assignment",
    )
    planted.extend(_pasted_private_keys(keys))
    planted.extend(_utf16_files(r, keys))
    return planted


def _pasted_private_keys(keys: KeyMaker) -> list[Planted]:
    """Private keys the way they reach files by hand: cut short, split into a language's
    string literals, or pasted onto one line."""
    rsa = keys.openssl_traditional("RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    openssh, _ = keys.ssh_keypair("ed25519", "pasted_key")
    lines = rsa.strip().split(b"\n")
    literals = b"".join(b'    "' + line + b'\\n"\n' for line in lines)
    continued = b"\\n\\\n".join(lines)
    one_line = b" ".join(openssh.strip().split(b"\n"))
    return [
        Planted("private key without its end line", "notes/server-key.txt",
                b"the server's key, from the old box:\n" + b"\n".join(lines[:-1]) + b"\n",
                pem_body(rsa), "private-key"),
        Planted("private key in string literals", "deploy/keys.py",
                b"SERVER_KEY = (\n" + literals + b")\n", pem_body(rsa), "private-key"),
        Planted("private key in one string continued over lines", "deploy/key_const.py",
                b'SERVER_KEY = "' + continued + b'\\n"\n', pem_body(rsa), "private-key"),
        Planted("private key pasted on one line", "docs/ssh-setup.md",
                b"Deploy key: " + one_line + b"\n", pem_body(openssh), "private-key"),
    ]


def _utf16_files(r: Randomness, keys: KeyMaker) -> list[Planted]:
    """Scripts and registry exports saved by Windows tools: UTF-16, with or without a BOM."""
    token = "gh" + "p_" + r.mixed(ALNUM, 36)
    secret_key = r.mixed(ALNUM + "+", 40)
    pkcs8 = keys.pkcs8()
    script = f"# setup\r\n$env:GH_TOKEN = '{token}'\r\ngh auth status\r\n"
    registry = ("Windows Registry Editor Version 5.00\r\n\r\n[HKEY_CURRENT_USER\\Software\\Acme]"
                f'\r\n"aws_secret_access_key"="{secret_key}"\r\n')
    key_note = "Key for the build agent:\r\n" + pkcs8.decode().replace("\n", "\r\n")
    return [
        Planted("github token in a utf-16 script", "scripts/setup.ps1",
                script.encode("utf-16"), token.encode(), "github-token", "utf-16"),
        Planted("aws secret key in a utf-16 registry export", "windows/acme.reg",
                registry.encode("utf-16-be"), secret_key.encode(), "aws-secret-access-key",
                "utf-16-be"),
        Planted("private key in a utf-16 note", "notes/agent-key.txt",
                key_note.encode("utf-16-le"), pem_body(pkcs8), "private-key", "utf-16-le"),
    ]


def planted_in_paths(seed: int = 15) -> list[Planted]:
    """Tokens in a file's path (its name or a directory's): the path is pushed too."""
    r = Randomness(seed)
    github = "gh" + "p_" + r.mixed(ALNUM, 36)
    access_key_id = "AKIA" + r.text(BASE32_UPPER, 16)
    slack = "xo" + "xb-" + r.text(DIGITS, 12) + "-" + r.text(DIGITS, 13) + "-" + r.mixed(ALNUM, 24)
    secret_key = r.mixed(ALNUM + "+", 40)
    return [
        Planted("github token as a file name", f"notes/{github}.txt", b"see the name\n",
                github.encode(), "github-token"),
        Planted("aws access key id as a directory", f"backup/{access_key_id}/config",
                b"[default]\n", access_key_id.encode(), "aws-access-key-id"),
        Planted("slack token in a directory name", f"bots/{slack}/settings.yml",
                b"channel: general\n", slack.encode(), "slack-token"),
        Planted("aws secret key in a file name", f"keys/aws_secret_access_key={secret_key}",
                b"", secret_key.encode(), "aws-secret-access-key"),
    ]


@dataclass(frozen=True)
class NamedFile:
    """A file flagged for its name (and, for some, for what its content says)."""

    kind: str
    path: str
    content: bytes
    rule: str


def named_files(workdir: Path, seed: int = 13) -> list[NamedFile]:
    r = Randomness(seed)
    keys = KeyMaker(workdir / "named")
    rsa, _ = keys.ssh_keypair("rsa", "id_rsa")
    service_account = json.dumps(
        {"type": "service_account", "private_key": keys.pkcs8().decode()}
    ).encode()
    return [
        NamedFile(
            ".env",
            "config/.env",
            b"DEBUG=1\nSECRET=" + r.mixed(ALNUM, 24).encode() + b"\n",
            "env-file",
        ),
        NamedFile(
            ".env.production", ".env.production", b"API_URL=https://api.example.org\n", "env-file"
        ),
        NamedFile("id_rsa", "id_rsa", rsa, "ssh-private-key-file"),
        NamedFile(
            "id_ed25519 renamed content",
            "home/.ssh/id_ed25519",
            b"(copied from the laptop)\n",
            "ssh-private-key-file",
        ),
        NamedFile(
            "pkcs12 keystore",
            "certs/client.p12",
            b"\x30\x82\x0a\x1c\x02\x01\x03" + r.bytes(600),
            "keystore-file",
        ),
        NamedFile(
            "java keystore",
            "android/release.jks",
            b"\xfe\xed\xfe\xed\x00\x00\x00\x02" + r.bytes(300),
            "keystore-file",
        ),
        NamedFile(
            "credentials json",
            "credentials.json",
            json.dumps(
                {
                    "installed": {
                        "client_id": "x.apps.googleusercontent.com",
                        "client_secret": "fake",
                    }
                }
            ).encode(),
            "credentials-file",
        ),
        NamedFile(
            "service account json",
            "deploy/service-account-prod.json",
            service_account,
            "credentials-file",
        ),
        NamedFile(
            ".git-credentials",
            ".git-credentials",
            b"https://person:token@example.org\n",
            "git-credentials-file",
        ),
    ]


# --- benign files -----------------------------------------------------------------------------


def _png_data_uri(r: Randomness, side: int = 48) -> str:
    raw = b"".join(b"\x00" + r.bytes(side * 3) for _ in range(side))

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + tag
            + payload
            + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _b64(r: Randomness, n_bytes: int) -> str:
    return base64.b64encode(r.bytes(n_bytes)).decode()


def synthetic_minified_js(r: Randomness, size: int = 110_000) -> bytes:
    """A bundle the way minifiers write one: short names, long lines, hashes and base64."""
    parts = [
        "/*! bundle v3.2.1 | MIT */"
        '!function(e,t){"object"==typeof exports?module.exports=t():e.B=t()}'
        '(this,function(){"use strict";'
    ]
    idents = [a + b for a in LOWER for b in LOWER + DIGITS + "_$"]
    while sum(map(len, parts)) < size:
        pick = r.rng.randrange(9)
        a, b, c = (r.rng.choice(idents) for _ in range(3))
        if pick == 0:
            parts.append(
                f'var {a}="{r.text(ALNUM, r.rng.randrange(8, 40))}",{b}={r.rng.randrange(1 << 30)};'
            )
        elif pick == 1:
            parts.append(
                f"function {a}({b},{c}){{return {b}.{c}?{b}[{c}]:void 0!=={c}&&{b}.call({c})}}"
            )
        elif pick == 2:
            parts.append(
                f'{a}.prototype.{b}=function(){{this._{c}="{r.text(HEX, 8)}";return this}};'
            )
        elif pick == 3:
            parts.append(
                f'{a}["{r.text(HEX, 20)}"]='
                f"function(e,t,n){{n.d(t,{{{b}:function(){{return {c}}}}})}},"
            )
        elif pick == 4:
            parts.append(f'const {a}="data:font/woff2;base64,{_b64(r, r.rng.randrange(60, 600))}";')
        elif pick == 5:
            parts.append(
                f"{a}=/^[a-z0-9_$]{{{r.rng.randrange(1, 9)},}}(?:\\.[a-z]+)*$/i,"
                f'{b}="#{r.text(HEX, 6)}";'
            )
        elif pick == 6:
            parts.append(f'{a}.exports="{r.text(ALNUM + "-_", r.rng.randrange(20, 64))}";')
        elif pick == 7:
            parts.append(f'sha:"{r.text(HEX, 40)}",integrity:"sha384-{_b64(r, 48)}",')
        else:
            parts.append(
                f"if({a}&&{b}.length>{r.rng.randrange(100)}){{{c}({a},{b}.slice(0,-1))}}"
                f'else{{throw new Error("{a}")}}'
            )
    parts.append("});\n//# sourceMappingURL=bundle.min.js.map\n")
    return "".join(parts).encode()


def system_minified_js(limit: int = 4) -> list[Path]:
    """Real minified builds that ship with Debian packages on this machine."""
    found = sorted(glob.glob("/usr/share/javascript/**/*.min.js", recursive=True))
    return [Path(p) for p in found[:limit]]


def stdlib_text(size: int = 100_000) -> bytes:
    """Ordinary text: Python standard library sources, cut to ``size`` bytes."""
    base = Path(json.__file__).resolve().parent.parent
    out = bytearray()
    for name in ("argparse.py", "textwrap.py", "difflib.py", "inspect.py", "typing.py", "ast.py"):
        out += (base / name).read_bytes()
        if len(out) >= size:
            break
    return bytes(out[:size])


def benign_files(workdir: Path, seed: int = 14) -> list[Benign]:
    r = Randomness(seed)
    keys = KeyMaker(workdir / "benign")
    files: list[Benign] = []

    def add(kind: str, path: str, content: str | bytes) -> None:
        files.append(Benign(kind, path, content.encode() if isinstance(content, str) else content))

    names = [r.text(LOWER, r.rng.randrange(3, 12)) for _ in range(150)]
    lock = {
        "name": "app",
        "lockfileVersion": 3,
        "packages": {
            f"node_modules/{n}": {
                "version": f"{r.rng.randrange(9)}.{r.rng.randrange(20)}.{r.rng.randrange(9)}",
                "resolved": f"https://registry.npmjs.org/{n}/-/{n}-1.0.0.tgz",
                "integrity": "sha512-" + _b64(r, 64),
            }
            for n in names
        },
    }
    add("package-lock.json integrity", "package-lock.json", json.dumps(lock, indent=2))
    add(
        "yarn.lock",
        "yarn.lock",
        "".join(
            f'{n}@^1.0.0:\n  version "1.0.0"\n'
            f'  resolved "https://registry.yarnpkg.com/{n}/-/{n}-1.0.0.tgz#{r.text(HEX, 40)}"\n'
            f"  integrity sha512-{_b64(r, 64)}\n\n"
            for n in names
        ),
    )
    add(
        "poetry.lock hashes",
        "poetry.lock",
        "".join(
            f'[[package]]\nname = "{n}"\nversion = "2.1.0"\nfiles = [\n'
            f'    {{file = "{n}-2.1.0-py3-none-any.whl", hash = "sha256:{r.text(HEX, 64)}"}},\n'
            f'    {{file = "{n}-2.1.0.tar.gz", hash = "sha256:{r.text(HEX, 64)}"}},\n]\n\n'
            for n in names
        ),
    )
    add(
        "requirements with hashes",
        "requirements.txt",
        "".join(
            f"{n}==1.2.3 \\\n    --hash=sha256:{r.text(HEX, 64)} \\\n"
            f"    --hash=sha256:{r.text(HEX, 64)}\n"
            for n in names
        ),
    )
    add(
        "go.sum",
        "go.sum",
        "".join(
            f"github.com/{n}/{n} v1.{r.rng.randrange(30)}.0 h1:{_b64(r, 32)}\n"
            f"github.com/{n}/{n} v1.{r.rng.randrange(30)}.0/go.mod h1:{_b64(r, 32)}\n"
            for n in names
        ),
    )
    add(
        "Cargo.lock checksums",
        "Cargo.lock",
        "".join(
            f'[[package]]\nname = "{n}"\nversion = "0.4.1"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\n'
            f'checksum = "{r.text(HEX, 64)}"\n\n'
            for n in names
        ),
    )
    add(
        "uuid list",
        "data/ids.txt",
        "\n".join(str(uuid.UUID(int=r.rng.getrandbits(128))) for _ in range(800)),
    )
    add(
        "base64 png data uri",
        "web/index.html",
        f'<!doctype html><html><body><img alt="logo" src="{_png_data_uri(r)}"></body></html>\n',
    )
    add(
        "notebook with image output",
        "analysis.ipynb",
        json.dumps(
            {
                "cells": [
                    {
                        "cell_type": "code",
                        "outputs": [{"data": {"image/png": _png_data_uri(r).split(",", 1)[1]}}],
                    }
                ]
            }
        ),
    )
    add("synthetic minified js", "static/bundle.min.js", synthetic_minified_js(r))
    for real in system_minified_js():
        add(f"system minified js {real.name}", f"vendor/{real.name}", real.read_bytes())
    add(
        "git commit list",
        "CHANGES.log",
        "".join(
            f"commit {r.text(HEX, 40)}\ntree {r.text(HEX, 40)}\nparent {r.text(HEX, 40)}\n"
            f"Author: Ada <ada@example.org>\n\n    Fix {r.rng.choice(names)} ({r.text(HEX, 7)})\n\n"
            for _ in range(300)
        ),
    )
    add("pem certificate", "certs/server.crt", keys.certificate())
    _, public = keys.ssh_keypair("ed25519", "id_ed25519")
    add("ssh public key", "home/.ssh/id_ed25519.pub", public)
    add("authorized_keys", "home/.ssh/authorized_keys", public * 3)
    add(
        "hex dump",
        "docs/dump.txt",
        subprocess.run(["xxd"], input=r.bytes(4096), capture_output=True, check=True).stdout,
    )
    add(
        "sri hashes",
        "web/cdn.html",
        "".join(
            f'<script src="https://cdn.example.org/{n}.js" integrity="sha384-{_b64(r, 48)}" '
            'crossorigin="anonymous"></script>\n'
            for n in names[:60]
        ),
    )
    add(
        "container digests",
        "k8s/deploy.yaml",
        "".join(
            f"- image: registry.example.org/{n}@sha256:{r.text(HEX, 64)}\n" for n in names[:80]
        ),
    )
    add(
        "bcrypt hashes",
        "fixtures/users.csv",
        "".join(f"{n},$2b$12${r.text(ALNUM + './', 53)}\n" for n in names[:80]),
    )
    add(
        "placeholders and documentation examples",
        "docs/configuration.md",
        "\n".join(
            [
                "# Configuration",
                "AWS's documentation uses AKIAIOSFODNN7EXAMPLE with "
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY.",
                "Set `GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx` in your shell.",
                "OPENAI_API_KEY=sk-...your-key-here...",
                'api_key = "<your-api-key>"',
                "password: ${DB_PASSWORD}",
                'password = "{{ vault_db_password }}"',
                "DATABASE_URL=postgres://user:password@localhost:5432/app",
                "REDIS_URL=redis://:${REDIS_PASSWORD}@redis:6379/0",
                "url = https://username:<password>@git.example.org/repo.git",
                'SECRET_KEY = os.environ["SECRET_KEY"]',
                "stripe_key: sk_live_XXXXXXXXXXXXXXXXXXXXXXXX",
                'token: "{{ .Values.token }}"',
                'client_secret = "${CLIENT_SECRET}"',
                'PASSWORD = "changeme"',
                "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
                "",
            ]
        ),
    )
    add(
        ".env.example",
        "config/.env.example",
        "DATABASE_URL=postgres://user:pass@localhost/app\nSECRET_KEY=change-me\nAWS_ACCESS_KEY_ID=\n",
    )
    add(
        ".npmrc without a token",
        "web/.npmrc",
        "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n",
    )
    add("python source", "lib/stdlib_sample.py", stdlib_text())
    add(
        "password-handling code",
        "app/auth.py",
        "\n".join(
            [
                "def login(request):",
                '    password = request.POST["password"]',
                "    password_hash = make_password(password)",
                "    token = secrets.token_urlsafe(32)",
                "    if not check_password(password, user.password):",
                '        raise PermissionDenied("bad password")',
                "    api_key = settings.API_KEY",
                '    return {"token": token}',
                "",
            ]
        ),
    )
    add(
        "private key parsing code",
        "lib/pem.py",
        "\n".join(
            [
                "BEGIN_RSA = '-----BEGIN RSA PRIVATE KEY-----'",
                "PEM = re.compile(r'-----BEGIN (?P<kind>[A-Z ]+) PRIVATE KEY-----\\s*'",
                "                 r'(?P<body>[A-Za-z0-9+/=\\s]+)-----END')",
                "def read(lines):",
                '    if lines[0].startswith("-----BEGIN RSA PRIVATE KEY-----"):',
                "        body = lines[1:-1]",
                '    elif lines[0] == "-----BEGIN OPENSSH PRIVATE KEY-----":',
                "        body = decode_openssh(lines)",
                '    return ("-----BEGIN PRIVATE KEY-----\\n" + b64(body)',
                '            + "\\n-----END PRIVATE KEY-----")',
                "",
            ]
        ),
    )
    add(
        "abbreviated private keys in documentation",
        "docs/keys.md",
        "A key file starts with `-----BEGIN OPENSSH PRIVATE KEY-----` and ends with its END"
        " line:\n\n"
        "```\n-----BEGIN RSA PRIVATE KEY-----\n"
        + "\n".join(r.mixed(B64, 64) for _ in range(2))
        + "\n...\n-----END RSA PRIVATE KEY-----\n```\n\n"
        "-----BEGIN OPENSSH PRIVATE KEY----- <your key> -----END OPENSSH PRIVATE KEY-----\n",
    )
    add(
        "ansible vars with vault references",
        "group_vars/all.yml",
        'db_pass: "{{ vault_db_pass }}"\nadmin_pass: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n'
        + "".join(f"  {r.text(HEX, 80)}\n" for _ in range(4))
        + "mysql_pass: changeme\napi_pass: ${API_PASS}\nbackup_pass:\nresult: pass\n",
    )
    add(
        "utf-16 registry export",
        "windows/settings.reg",
        (
            "Windows Registry Editor Version 5.00\r\n\r\n[HKEY_CURRENT_USER\\Software\\Acme]\r\n"
            f'"InstallId"="{{{uuid.UUID(int=r.rng.getrandbits(128))}}}"\r\n'
            f'"Checksum"=hex:{",".join(r.text(HEX, 2) for _ in range(32))}\r\n'
        ).encode("utf-16"),
    )
    add("token-shaped example as a file name", "docs/examples/AKIAIOSFODNN7EXAMPLE.json", "{}\n")
    return files
