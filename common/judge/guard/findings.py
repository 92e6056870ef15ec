"""What the guard reports: rule identities, findings and their keyed fingerprints.

A :class:`Finding` names the rule, the file, the line and column, and a fingerprint of
the matched secret. It never holds the secret: the fingerprint is an HMAC keyed with a
per-installation key, so it recognises the same secret again but cannot be reversed
by hashing guesses.
"""

import enum
import hashlib
import hmac
from dataclasses import dataclass

FINGERPRINT_HEX_CHARS = 32  # 128 bits of the HMAC: plenty to tell secrets apart
MIN_KEY_BYTES = 16


class FindingKind(enum.Enum):
    """Why a path is held."""

    SECRET = "secret"  # content matched a secret rule
    FILE_NAME = "file-name"  # the file's name (and maybe its kind of content) says secret
    SIZE = "size"  # too big for a plain git commit

    def __str__(self) -> str:
        return self.value


class RuleId(enum.Enum):
    """Every rule the guard can report; the value is the id people write in allowlists."""

    AWS_ACCESS_KEY_ID = "aws-access-key-id"
    AWS_SECRET_ACCESS_KEY = "aws-secret-access-key"
    GCP_API_KEY = "gcp-api-key"
    GCP_OAUTH_CLIENT_SECRET = "gcp-oauth-client-secret"
    AZURE_STORAGE_ACCOUNT_KEY = "azure-storage-account-key"
    AZURE_AD_CLIENT_SECRET = "azure-ad-client-secret"
    AZURE_SAS_TOKEN = "azure-sas-token"
    PRIVATE_KEY = "private-key"
    GITHUB_TOKEN = "github-token"
    GITLAB_TOKEN = "gitlab-token"
    SLACK_TOKEN = "slack-token"
    SLACK_WEBHOOK = "slack-webhook"
    STRIPE_SECRET_KEY = "stripe-secret-key"
    OPENAI_API_KEY = "openai-api-key"
    ANTHROPIC_API_KEY = "anthropic-api-key"
    HUGGINGFACE_TOKEN = "huggingface-token"
    AI_PROVIDER_KEY = "ai-provider-key"
    NPM_TOKEN = "npm-token"
    PYPI_TOKEN = "pypi-token"
    JWT = "jwt"
    URL_PASSWORD = "url-password"
    TWILIO_AUTH_TOKEN = "twilio-auth-token"
    PASSWORD_ASSIGNMENT = "password-assignment"
    TOKEN_ASSIGNMENT = "token-assignment"
    AUTHORIZATION_HEADER = "authorization-header"
    COMMAND_LINE_PASSWORD = "command-line-password"
    REGISTRY_AUTH = "registry-auth"
    NPMRC_CREDENTIAL = "npmrc-credential"
    PYPIRC_CREDENTIAL = "pypirc-credential"
    NETRC_CREDENTIAL = "netrc-credential"
    PROVIDER_TOKEN = "provider-token"
    ENV_FILE = "env-file"
    SSH_PRIVATE_KEY_FILE = "ssh-private-key-file"
    KEYSTORE_FILE = "keystore-file"
    CREDENTIALS_FILE = "credentials-file"
    GIT_CREDENTIALS_FILE = "git-credentials-file"
    SECRET_NAMED_FILE = "secret-named-file"
    OVERSIZED_NEW_FILE = "oversized-new-file"
    OVERSIZED_GROWTH = "oversized-growth"

    @property
    def kind(self) -> FindingKind:
        return _KINDS.get(self, FindingKind.SECRET)

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    def __str__(self) -> str:
        return self.value


_KINDS = {
    RuleId.ENV_FILE: FindingKind.FILE_NAME,
    RuleId.SSH_PRIVATE_KEY_FILE: FindingKind.FILE_NAME,
    RuleId.KEYSTORE_FILE: FindingKind.FILE_NAME,
    RuleId.CREDENTIALS_FILE: FindingKind.FILE_NAME,
    RuleId.GIT_CREDENTIALS_FILE: FindingKind.FILE_NAME,
    RuleId.SECRET_NAMED_FILE: FindingKind.FILE_NAME,
    RuleId.OVERSIZED_NEW_FILE: FindingKind.SIZE,
    RuleId.OVERSIZED_GROWTH: FindingKind.SIZE,
}

_DESCRIPTIONS = {
    RuleId.AWS_ACCESS_KEY_ID: "AWS access key ID",
    RuleId.AWS_SECRET_ACCESS_KEY: "AWS secret access key",
    RuleId.GCP_API_KEY: "Google Cloud / Google AI API key",
    RuleId.GCP_OAUTH_CLIENT_SECRET: "Google OAuth client secret",
    RuleId.AZURE_STORAGE_ACCOUNT_KEY: "Azure storage account key",
    RuleId.AZURE_AD_CLIENT_SECRET: "Azure AD (Entra ID) client secret",
    RuleId.AZURE_SAS_TOKEN: "Azure shared access signature",
    RuleId.PRIVATE_KEY: "private key",
    RuleId.GITHUB_TOKEN: "GitHub token",
    RuleId.GITLAB_TOKEN: "GitLab token",
    RuleId.SLACK_TOKEN: "Slack token",
    RuleId.SLACK_WEBHOOK: "Slack incoming webhook URL",
    RuleId.STRIPE_SECRET_KEY: "Stripe secret or restricted key",
    RuleId.OPENAI_API_KEY: "OpenAI API key",
    RuleId.ANTHROPIC_API_KEY: "Anthropic API key",
    RuleId.HUGGINGFACE_TOKEN: "Hugging Face token",
    RuleId.AI_PROVIDER_KEY: "AI provider API key",
    RuleId.NPM_TOKEN: "npm access token",
    RuleId.PYPI_TOKEN: "PyPI API token",
    RuleId.JWT: "JSON Web Token",
    RuleId.URL_PASSWORD: "password in a URL",
    RuleId.TWILIO_AUTH_TOKEN: "Twilio auth token",
    RuleId.PASSWORD_ASSIGNMENT: "password or secret assigned in code or config",
    RuleId.TOKEN_ASSIGNMENT: "token or key assigned in code or config",
    RuleId.AUTHORIZATION_HEADER: "credential in an HTTP Authorization header",
    RuleId.COMMAND_LINE_PASSWORD: "password on a command line (curl -u, sshpass -p, mysql -p)",
    RuleId.REGISTRY_AUTH: "container registry credential (docker/podman \"auth\")",
    RuleId.NPMRC_CREDENTIAL: ".npmrc registry credential",
    RuleId.PYPIRC_CREDENTIAL: ".pypirc password",
    RuleId.NETRC_CREDENTIAL: ".netrc password",
    RuleId.PROVIDER_TOKEN: "API token",
    RuleId.ENV_FILE: "environment file (.env)",
    RuleId.SSH_PRIVATE_KEY_FILE: "SSH private key file",
    RuleId.KEYSTORE_FILE: "key or password store, or binary private key file",
    RuleId.CREDENTIALS_FILE: "credentials file",
    RuleId.GIT_CREDENTIALS_FILE: "git credential store",
    RuleId.SECRET_NAMED_FILE: "file named for a secret holding one (password.txt, api_key)",
    RuleId.OVERSIZED_NEW_FILE: "new file over the size limit",
    RuleId.OVERSIZED_GROWTH: "tracked file grew over the size limit",
}


@dataclass(frozen=True)
class Finding:
    """One reason to hold a path. Holds no secret: only where it is and a keyed fingerprint.

    ``line`` and ``column`` are 1-based (column counts bytes); both are 0 for findings
    about the whole file (its name or size). ``detector`` names the exact format that
    matched (``github-token``, ``sendgrid-api-key``, ...): the :class:`RuleId` value, or
    a finer id for provider formats grouped under one rule. ``fingerprint`` is "" for
    size findings, which hold nothing secret.
    """

    rule: RuleId
    path: str
    line: int
    column: int
    fingerprint: str
    description: str
    detector: str

    @property
    def kind(self) -> FindingKind:
        return self.rule.kind

    def render(self) -> str:
        """One line for a person: where, what, and the fingerprint to allowlist it by."""
        where = self.path if self.line == 0 else f"{self.path}:{self.line}:{self.column}"
        fingerprint = f" [{self.fingerprint}]" if self.fingerprint else ""
        return f"{where}: {self.description} ({self.rule.value}){fingerprint}"


class Fingerprinter:
    """Keyed fingerprints: HMAC-SHA256 under the installation's key, truncated for display."""

    def __init__(self, key: bytes):
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the fingerprint key must be at least {MIN_KEY_BYTES} random bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Fingerprinter(key=<hidden>)"

    def secret(self, secret: bytes) -> str:
        return hmac.new(self._key, b"secret\0" + secret, hashlib.sha256).hexdigest()[
            :FINGERPRINT_HEX_CHARS
        ]

    def path(self, path: str) -> str:
        """For findings about a whole file: recognises the path, like a secret's fingerprint."""
        return hmac.new(
            self._key, b"path\0" + path.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()[:FINGERPRINT_HEX_CHARS]


def git_blob_id(data: bytes, object_format: str = "sha1") -> str:
    """The object id git gives ``data`` as a blob (``git hash-object``), for release records."""
    if object_format not in ("sha1", "sha256"):
        raise ValueError(f"unknown git object format {object_format!r}: use sha1 or sha256")
    digest = hashlib.new(object_format)
    digest.update(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()
