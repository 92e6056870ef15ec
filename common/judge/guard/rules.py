"""The guard's rules: token formats, secrets that need context, and file-name rules.

Every content rule names its anchors: substrings one of which must occur in the file
before its regex runs at all, and then only on the lines (in long lines: windows) that
hold one. Anchors of token formats are their exact, case-sensitive prefixes (``ghp_``,
``AKIA``, ``-----BEGIN``); context rules use lower-case words found case-insensitively
(``secret``, ``password``). Most files hold none of the anchors, so most files cost one
substring search per anchor and no regex at all. Every regex is bytes, and puts the
secret in the group ``secret`` (assignments: in whichever quoting group matched).

Which kinds exist follows the public rule sets of gitleaks and of the providers' own
documentation; the regexes are gitsieve's. Tokens are matched by format and never
validated, so no request ever leaves the machine.
"""
from __future__ import annotations

import base64
import binascii
import functools
import posixpath
import re
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote_to_bytes

from gitsieve.common.judge.guard.findings import RuleId
from gitsieve.common.judge.guard.placeholders import (
    looks_like_password,
    looks_like_password_placeholder,
    looks_like_placeholder,
    looks_like_token,
    shannon_entropy,
)

# Files whose unquoted right-hand sides are code (names, calls), not literal values.
CODE_EXTENSIONS = frozenset(
    """
    .py .pyi .js .mjs .cjs .jsx .ts .tsx .java .kt .kts .scala .groovy .go .rs .rb .php .cs .fs
    .c .h .cc .cpp .hpp .m .mm .swift .dart .lua .pl .pm .r .jl .ex .exs .erl .clj .vue .svelte
""".split()
)

_ASSIGN = (
    rb"(?:\\?[\"'])?[ \t]{0,3}(?::[ \t]*[A-Za-z_][\w\[\]., ]{0,30}[ \t]*)?(?:=>|:=|\?=|=(?!=)|:)[ \t]{0,3}"
)
# A bare value after ":" needs a space first (YAML), which keeps "arn:...:secret:name" out.
_QUOTED_OR_BARE = (
    rb"(?:\"(?P<dq>[^\"\r\n]{1,200})\"|'(?P<sq>[^'\r\n]{1,200})'|`(?P<bq>[^`\r\n]{1,200})`"
    # code kept in a JSON string (a notebook's cell): its quotes are escaped
    rb"|\\\"(?P<eq>[^\"\\\r\n]{1,200})\\\""
    # bare: a comment starts with a "#" after a space (YAML, shell, dotenv), not in a word;
    # a ";" or "," inside it is its own (YAML, INI, dotenv), one that ends it is punctuation
    rb"|(?<![^:\s]:)(?P<bare>[^\s\"'`#;,](?:[^\s\"'`;,]|[;,](?=[^\s\"'`;,])){0,199}))"
)

# How far a private key block may reach from its BEGIN line (a PGP key with subkeys
# runs to several KB).
PEM_REACH = 32 * 1024

# Priorities when matches overlap: a rule made for the exact format beats the generic
# password rule.
PRIORITY_FORMAT, PRIORITY_GENERIC = 0, 2


@dataclass(frozen=True)
class ContentRule:
    """A regex rule run only where one of its anchors occurs.

    ``exact_anchors``: the anchors are case-sensitive token prefixes; otherwise they are
    lower-case words found case-insensitively. ``accept(match, path)`` has the last word
    on a match (entropy, format, context). ``basenames`` limits the rule to files of those
    names. ``detector`` names the format (default: the rule id), ``description`` says it
    for people. ``multiline`` rules (private key blocks) search from the anchor's line
    onwards instead of within it; ``binary`` rules also run on binary data.
    ``normalise`` turns the matched secret into the bytes that are fingerprinted (a PEM
    body without its line breaks, so one key has one fingerprint however it is quoted).
    """

    rule: RuleId
    anchors: tuple[bytes, ...]
    pattern: re.Pattern
    accept: Callable[[re.Match, str], bool] | None = None
    basenames: frozenset[str] = field(default=frozenset())
    exact_anchors: bool = False
    detector: str = ""
    description: str = ""
    priority: int = PRIORITY_FORMAT
    multiline: bool = False
    binary: bool = False
    normalise: Callable[[bytes], bytes] | None = None
    locate_whole_match: bool = False

    def __post_init__(self):
        if not self.exact_anchors and any(a != a.lower() for a in self.anchors):
            raise ValueError(f"{self.rule.value}: case-insensitive anchors must be lower-case")
        if not self.detector:
            object.__setattr__(self, "detector", self.rule.value)
        if not self.description:
            object.__setattr__(self, "description", self.rule.description)

    def applies_to(self, path: str) -> bool:
        return not self.basenames or posixpath.basename(path) in self.basenames

    @property
    def reads_paths(self) -> bool:
        """Whether the rule reads paths too: a path is pushed with its file, so a token in
        a file's or a directory's name leaks.  Format rules do; the generic assignments do
        not, for a name says what a file is about ("db_password.txt")."""
        return self.priority == PRIORITY_FORMAT and not self.multiline and not self.basenames


_SECRET_GROUPS = ("secret", "dq", "sq", "bq", "eq", "bare")


def _secret_group(match: re.Match) -> str:
    """The group holding the secret: ``secret``, or whichever quoting group matched."""
    groups = match.groupdict()
    for name in _SECRET_GROUPS:
        if groups.get(name) is not None:
            return name
    raise ValueError(f"pattern {match.re.pattern!r} has no secret group")


def secret_of(match: re.Match) -> bytes:
    return match.group(_secret_group(match))


def secret_span(match: re.Match) -> tuple[int, int]:
    return match.span(_secret_group(match))


def _named_assignment(names: bytes) -> re.Pattern:
    """``NAME = value`` (or ``:``, ``=>``, ``:=``...) where NAME ends in one of ``names``
    (case-insensitive), perhaps followed by ``_base``, ``_value`` or ``_string``; the name
    is group ``name``, the value one of the quoting groups or ``bare``."""
    return re.compile(
        rb"(?<![A-Za-z0-9_:])(?P<name>(?i:[A-Za-z0-9_.-]{0,40}?(?:" + names + rb")"
        rb"(?:[_.-](?:base|value|string))?))"
        + _ASSIGN
        + _QUOTED_OR_BARE
    )


# --- acceptance checks -------------------------------------------------------------------------


def _min_entropy(bits: float) -> Callable[[re.Match, str], bool]:
    def accept(match: re.Match, path: str) -> bool:
        return shannon_entropy(secret_of(match)) >= bits

    return accept


def _mixed_case(bits: float) -> Callable[[re.Match, str], bool]:
    """Random tokens over letters hold both cases; words and identifiers mostly do not."""

    def accept(match: re.Match, path: str) -> bool:
        secret = secret_of(match)
        return (
            secret.lower() != secret
            and secret.upper() != secret
            and shannon_entropy(secret) >= bits
        )

    return accept


def _mixed_base64_secret(match: re.Match, path: str) -> bool:
    """AWS secret keys: 40 base64 characters mixing cases and digits, as random keys do."""
    secret = secret_of(match)
    kinds = sum(
        (
            any(65 <= c <= 90 for c in secret),
            any(97 <= c <= 122 for c in secret),
            any(48 <= c <= 57 or c in b"+/" for c in secret),
        )
    )
    return kinds == 3 and shannon_entropy(secret) >= 4.0


def _sas_signature(match: re.Match, path: str) -> bool:
    """A SAS URL signs with HMAC-SHA256: the signature is 43 base64 characters plus '='."""
    line = match.string[match.pos : match.endpos]
    signature = unquote_to_bytes(secret_of(match)).rstrip(b"=")
    return (
        b"sv=" in line
        and len(signature) == 43
        and re.fullmatch(rb"[A-Za-z0-9+/]+", signature) is not None
    )


def _credential_value(match: re.Match, path: str) -> bool:
    return not looks_like_password_placeholder(secret_of(match).strip(b"\"'"))


# A call as an unquoted value: ``get_pw()``, ``os.getenv(`` (cut at its quoted argument),
# ``fn(x);``, or a name closing one's arguments (``password=token))``).  A password may
# hold parentheses too, but not as a name followed by ``(`` and a closed argument list.
_CALL = re.compile(rb"[A-Za-z_][\w.]*(?:\((?:[^()]*\))?|\))[);,]*")


def _bare_code_name(match: re.Match, path: str) -> bool:
    """Whether an unquoted right-hand side names or computes something: a call
    (``get_pw()``) anywhere; in code, any unquoted value unless it sits inside a string
    literal, as in a connection string (``"Server=db;Password=...;"``): an odd number of
    quotes before the value on its line (a quoted key has two)."""
    bare = match.group("bare")
    if bare is None:
        return False
    if bare.startswith(b"$(") or _CALL.fullmatch(bare):
        return True
    if posixpath.splitext(path)[1].lower() not in CODE_EXTENSIONS:
        return False
    text, value_start = match.string, match.start("bare")
    line_start = text.rfind(b"\n", 0, value_start) + 1
    before = text[line_start:value_start]
    return before.count(b'"') % 2 == 0 and before.count(b"'") % 2 == 0


def _password_assignment(match: re.Match, path: str) -> bool:
    """Quoted literals anywhere; unquoted values outside code, or inside a string in code.
    "pw" is a password's name only outside code: minified code names things in two letters."""
    if _bare_code_name(match, path):
        return False
    if match.group("name").lower().endswith(b"pw") \
            and posixpath.splitext(path)[1].lower() in CODE_EXTENSIONS:
        return False
    return looks_like_password(secret_of(match))


# What kinds of "...key" name a secret key (a bare "key" names anything).
_SECRET_KEY_KINDS = ("private", "encryption", "signing", "master", "access", "auth", "session")
# Names ending in "token" that carry no credential: where a listing resumes, a request's
# idempotency or change token, a form's anti-forgery value (rendered per request), counters.
_NOT_CREDENTIAL_TOKEN = re.compile(
    rb"(?i)(?:page|next|prev|previous|forward|backward|continuation|resume|sync|cursor|"
    rb"change|request|idempotency|csrf|xsrf|antiforgery|verification|cancellation|max|num|"
    rb"total|count|input|output)[_.-]?token$"
)


def _token_assignment(match: re.Match, path: str) -> bool:
    """As :func:`_password_assignment`, for a token or key: a literal that reads as a
    random token, under a name that is not a page or form token."""
    if _bare_code_name(match, path) or _NOT_CREDENTIAL_TOKEN.search(match.group("name")):
        return False
    return looks_like_token(secret_of(match))


def _literal_password(match: re.Match, path: str) -> bool:
    """A value that can only be a literal (an XML element's text, a quoted SQL password, a
    command line's argument) needs only to read as a password."""
    return looks_like_password(secret_of(match))


_PASSWORD_NAME = re.compile(rb"(?i)passw|pwd|secret")


def _named_value(match: re.Match, path: str) -> bool:
    """A value under a password name must read as a password; under a key or token name,
    as a token."""
    value = secret_of(match)
    if _PASSWORD_NAME.search(match.group("name")):
        return looks_like_password(value)
    return looks_like_token(value)


def _authorization_header(match: re.Match, path: str) -> bool:
    return looks_like_token(secret_of(match))


def _registry_auth(match: re.Match, path: str) -> bool:
    """A registry's ``"auth"``: base64 of ``user:password``, which is the password."""
    try:
        decoded = base64.b64decode(secret_of(match), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, colon, password = decoded.partition(b":")
    return bool(colon and user and password) and not looks_like_password_placeholder(password)


def _b64url_json(segment: bytes) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _jwt(match: re.Match, path: str) -> bool:
    """A signed JWT: its header is JSON naming an algorithm, its claims are not an example."""
    header, claims, _ = secret_of(match).split(b".", 2)
    decoded_header, decoded_claims = _b64url_json(header), _b64url_json(claims)
    if decoded_header is None or decoded_claims is None:
        return False
    if b'"alg"' not in decoded_header or b'"none"' in decoded_header.lower():
        return False
    return not looks_like_placeholder(decoded_claims)


_URL_USER = re.compile(rb"//([^\s:@/\"'<>]{0,64}):$")
# Words people put where a URL's password goes in examples.
_URL_PASSWORD_WORDS = frozenset(
    b"""token secret pass pwd apikey api_key mytoken access_token password1 xxx x""".split()
)


def _url_password(match: re.Match, path: str) -> bool:
    password = secret_of(match)
    if len(password) < 4 or looks_like_password_placeholder(password):
        return False
    if password.lower() in _URL_PASSWORD_WORDS or password.isdigit():
        return False
    user = _URL_USER.search(match.string, match.start(), match.start("secret"))
    return not (user and user.group(1) == password)


# What stands between the lines of a private key's body as people paste it: line breaks,
# real or escaped in a string literal ("\n", a backslash ending the line), spaces where the
# line breaks were, and the quotes, commas, brackets and joining "+" or "." of string
# literals ("...\n" "MIIE...", '...' + '...').  A "+" or "." counts only alone between
# spaces or quotes: inside a line "+" is base64.
_KEY_GAP = rb"(?:\s|\\[rn]|\\(?=\s)|[\"'`,;()\[\]]|(?<=[\s\"'`])[+.](?=[\s\"'`]))"
_KEY_GAPS = re.compile(_KEY_GAP + rb"+")
# A whole body: base64 and gaps, up to its END line (taken whole, never given back).
_KEY_BODY = rb"(?:" + _KEY_GAP + rb"|[A-Za-z0-9+/=]){0,%d}+" % PEM_REACH
_KEY_END = rb"-----END [A-Z0-9 ]{0,40}?PRIVATE KEY(?: BLOCK)?-----"
# A body cut short (no END line) is read as a key's lines: base64 lines of one width (64
# or 70 columns; all of it when unwrapped), the last one shorter.  Words are shorter than
# a line: prose after a BEGIN line is no key.  The last line has two characters at least,
# so a joining "+" after it is never one.
_KEY_LINE = rb"[A-Za-z0-9+/=]{32,8192}"
_KEY_LAST_LINE = rb"[A-Za-z0-9+/=]{2,8192}"
# In a whole body, pieces between gaps this long on average are lines (however a document
# re-wrapped them), shorter ones words.
_KEY_MEAN_PIECE = 16
# PEM and PGP armour headers ("Proc-Type: 4,ENCRYPTED", "Version: GnuPG") before the body,
# each the rest of its line; taken whole, for a value with spaces could be split into
# headers in very many ways ("A-: A-: ..." stalled the regex).
_KEY_HEADERS = (rb"(?:" + _KEY_GAP + rb"{1,64}+[A-Z][A-Za-z-]{1,30}:[^\r\n\\\"']{0,200}+)"
                rb"{0,8}+")
# What an example writes where it leaves the rest of a key out.
_KEY_LEFT_OUT = re.compile(
    rb"(?i)[\s\"'`,;(\[]{0,64}(?:\.\.\.|\xe2\x80\xa6|<[^<>\r\n]{0,40}>"
    rb"|(?:snip|truncated|omitted|redacted|shortened)\b)"
)


def _key_material(body: bytes) -> bytes:
    """A private key's base64, however it was pasted: the body without what stands between
    its lines (so one key has one fingerprint in a file, a JSON string or Python literals)."""
    return _KEY_GAPS.sub(b"", body)


def _in_lines(body: bytes) -> bool:
    """Whether a whole body reads as a key's lines rather than as words."""
    pieces = [piece for piece in _KEY_GAPS.split(body) if piece]
    return sum(map(len, pieces)) >= _KEY_MEAN_PIECE * len(pieces)


def _private_key_block(match: re.Match, path: str) -> bool:
    """Key material, not a stand-in: enough base64 and no placeholder marker; a whole body
    in lines, and one cut short not by an ellipsis or a "<snip>" (an example's)."""
    body = secret_of(match)
    material = _key_material(body)
    if len(material) < 64 or looks_like_placeholder(material):
        return False
    if match.group("end") is not None:
        return _in_lines(body)
    return _KEY_LEFT_OUT.match(match.string, match.end()) is None


# --- the rules --------------------------------------------------------------------------------


def _token(
    rule: RuleId,
    detector: str,
    description: str,
    anchors: tuple[str, ...],
    body: bytes,
    accept: Callable[[re.Match, str], bool] | None = None,
    edge: bytes = rb"A-Za-z0-9_",
) -> ContentRule:
    """A token with a fixed prefix: ``body`` matched whole, not inside a longer word."""
    pattern = re.compile(rb"(?<![" + edge + rb"])(?P<secret>" + body + rb")(?![" + edge + rb"])")
    return ContentRule(
        rule,
        tuple(anchor.encode() for anchor in anchors),
        pattern,
        accept or _min_entropy(3.0),
        exact_anchors=True,
        detector=detector,
        description=description,
    )


_DASHED = rb"A-Za-z0-9_-"

TOKEN_RULES: tuple[ContentRule, ...] = (
    _token(
        RuleId.AWS_ACCESS_KEY_ID,
        "aws-access-key-id",
        "AWS access key ID",
        ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        rb"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}",
        edge=rb"A-Za-z0-9",
    ),
    _token(
        RuleId.GCP_API_KEY,
        "gcp-api-key",
        "Google Cloud / Google AI API key",
        ("AIza",),
        rb"AIza[0-9A-Za-z_-]{35}",
        edge=_DASHED,
    ),
    _token(
        RuleId.GCP_OAUTH_CLIENT_SECRET,
        "gcp-oauth-client-secret",
        "Google OAuth client secret",
        ("GOCSPX-",),
        rb"GOCSPX-[A-Za-z0-9_-]{28}",
        _min_entropy(3.5),
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "google-oauth-access-token",
        "Google OAuth access token",
        ("ya29.",),
        rb"ya29\.[0-9A-Za-z_-]{30,}",
        _min_entropy(3.5),
        edge=_DASHED,
    ),
    _token(
        RuleId.AZURE_AD_CLIENT_SECRET,
        "azure-ad-client-secret",
        "Azure AD (Entra ID) client secret",
        ("Q~",),
        rb"[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34}",
        _min_entropy(3.5),
        edge=rb"A-Za-z0-9_~.-",
    ),
    _token(
        RuleId.GITHUB_TOKEN,
        "github-token",
        "GitHub token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        rb"gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}",
    ),
    _token(
        RuleId.GITLAB_TOKEN,
        "gitlab-token",
        "GitLab token",
        (
            "glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "glft-", "glimt-", "glsoat-",
            "gloas-", "glagent-", "glffct-", "glwt-", "GR1348941",
        ),
        rb"(?:glpat|gldt|glrt|glptt|glcbt|glft|glimt|glsoat|gloas|glagent|glffct|glwt)-"
        rb"[A-Za-z0-9_-]{20,255}(?:\.[A-Za-z0-9_-]{2,40}){0,3}|GR1348941[A-Za-z0-9_-]{20,}",
        edge=_DASHED,
    ),
    _token(
        RuleId.SLACK_TOKEN,
        "slack-token",
        "Slack token",
        ("xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-", "xoxe", "xapp-"),
        rb"xox[abposr]-\d+-[0-9A-Za-z-]{8,250}|xoxe(?:\.xox[bp])?-\d-[A-Z0-9]{140,170}"
        rb"|xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]{32,}",
        edge=_DASHED,
    ),
    _token(
        RuleId.SLACK_WEBHOOK,
        "slack-webhook",
        "Slack incoming webhook URL",
        ("hooks.slack.com",),
        rb"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]{20,150}",
        _min_entropy(3.5),
        edge=rb"A-Za-z0-9_/+-",
    ),
    _token(
        RuleId.STRIPE_SECRET_KEY,
        "stripe-secret-key",
        "Stripe secret or restricted key",
        ("sk_live_", "rk_live_"),
        rb"[sr]k_live_[A-Za-z0-9]{20,247}",
    ),
    _token(
        RuleId.OPENAI_API_KEY,
        "openai-api-key",
        "OpenAI API key",
        ("sk-proj-", "sk-svcacct-", "sk-admin-", "sk-None-", "T3BlbkFJ"),
        rb"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{40,300}"
        rb"|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}",
        edge=_DASHED,
    ),
    _token(
        RuleId.ANTHROPIC_API_KEY,
        "anthropic-api-key",
        "Anthropic API key",
        ("sk-ant-",),
        rb"sk-ant-(?:api|admin|oat|ort)\d{2}-[A-Za-z0-9_-]{80,120}",
        edge=_DASHED,
    ),
    _token(
        RuleId.HUGGINGFACE_TOKEN,
        "huggingface-token",
        "Hugging Face token",
        ("hf_", "api_org_"),
        rb"(?:hf|api_org)_[A-Za-z]{34}",
        _mixed_case(3.5),
    ),
    _token(
        RuleId.AI_PROVIDER_KEY, "groq-api-key", "Groq API key", ("gsk_",), rb"gsk_[A-Za-z0-9]{52}"
    ),
    _token(
        RuleId.AI_PROVIDER_KEY, "xai-api-key", "xAI API key", ("xai-",), rb"xai-[A-Za-z0-9]{80}",
        edge=_DASHED,
    ),
    _token(
        RuleId.AI_PROVIDER_KEY,
        "replicate-api-token",
        "Replicate API token",
        ("r8_",),
        rb"r8_[A-Za-z0-9]{37}",
    ),
    _token(
        RuleId.AI_PROVIDER_KEY,
        "openrouter-api-key",
        "OpenRouter API key",
        ("sk-or-v1-",),
        rb"sk-or-v1-[a-f0-9]{64}",
        edge=_DASHED,
    ),
    _token(
        RuleId.AI_PROVIDER_KEY,
        "perplexity-api-key",
        "Perplexity API key",
        ("pplx-",),
        rb"pplx-[A-Za-z0-9]{48}",
        edge=_DASHED,
    ),
    _token(
        RuleId.AI_PROVIDER_KEY,
        "langsmith-api-key",
        "LangSmith API key",
        ("lsv2_",),
        rb"lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}",
    ),
    _token(RuleId.NPM_TOKEN, "npm-token", "npm access token", ("npm_",), rb"npm_[A-Za-z0-9]{36}"),
    _token(
        RuleId.PYPI_TOKEN,
        "pypi-token",
        "PyPI API token",
        ("pypi-AgE",),
        rb"pypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,}",
        edge=_DASHED,
    ),
    _token(
        RuleId.JWT,
        "jwt",
        "JSON Web Token",
        ("eyJ",),
        rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}",
        _jwt,
        edge=rb"A-Za-z0-9_.-",
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "sendgrid-api-key",
        "SendGrid API key",
        ("SG.",),
        rb"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN, "mailgun-api-key", "Mailgun API key", ("key-",),
        rb"key-[0-9a-f]{32}", edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "mailchimp-api-key",
        "Mailchimp API key",
        ("-us",),
        rb"[0-9a-f]{32}-us[0-9]{1,2}",
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "age-secret-key",
        "age secret key",
        ("AGE-SECRET-KEY-1",),
        rb"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "digitalocean-token",
        "DigitalOcean token",
        ("dop_v1_", "doo_v1_", "dor_v1_"),
        rb"do[por]_v1_[a-f0-9]{64}",
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "shopify-token",
        "Shopify access token or shared secret",
        ("shpat_", "shpca_", "shppa_", "shpss_"),
        rb"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "databricks-token",
        "Databricks access token",
        ("dapi",),
        rb"dapi[a-f0-9]{32}(?:-[0-9])?",
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "atlassian-api-token",
        "Atlassian API token",
        ("ATATT3",),
        rb"ATATT3[A-Za-z0-9_=-]{150,250}",
        _min_entropy(4.0),
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN, "heroku-api-key", "Heroku API key", ("HRKU-",),
        rb"HRKU-[A-Za-z0-9_-]{40,80}", edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "vault-token",
        "HashiCorp Vault token",
        ("hvs.", "hvb."),
        rb"hv[sb]\.[A-Za-z0-9_-]{24,}",
        _min_entropy(3.5),
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "terraform-cloud-token",
        "Terraform Cloud / HCP token",
        (".atlasv1.",),
        rb"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}",
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "doppler-token",
        "Doppler token",
        ("dp.",),
        rb"dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}",
    ),
    _token(
        RuleId.PROVIDER_TOKEN, "linear-api-key", "Linear API key", ("lin_api_",),
        rb"lin_api_[A-Za-z0-9]{40}",
    ),
    _token(
        RuleId.PROVIDER_TOKEN, "postman-api-key", "Postman API key", ("PMAK-",),
        rb"PMAK-[a-f0-9]{24}-[a-f0-9]{34}", edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "sentry-token",
        "Sentry auth token",
        ("sntrys_", "sntryu_"),
        rb"sntrys_[A-Za-z0-9+/=_]{60,}|sntryu_[a-f0-9]{64}",
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "grafana-token",
        "Grafana token",
        ("glc_", "glsa_"),
        rb"glc_[A-Za-z0-9+/]{32,400}={0,2}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}",
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "telegram-bot-token",
        "Telegram bot token",
        (":AA",),
        rb"[0-9]{8,10}:AA[A-Za-z0-9_-]{33}",
        edge=_DASHED,
    ),
    _token(
        RuleId.PROVIDER_TOKEN,
        "square-token",
        "Square access token or secret",
        ("sq0atp-", "sq0csp-"),
        rb"sq0(?:atp|csp)-[A-Za-z0-9_-]{22,43}",
        edge=_DASHED,
    ),
)

PRIVATE_KEY_RULE = ContentRule(
    RuleId.PRIVATE_KEY,
    (b"-----BEGIN",),
    # A BEGIN line and the key's body after it: raw, in a JSON/YAML string with escaped line
    # breaks (a GCP service account), in a language's string literals, or on one line with
    # spaces; the whole body when it reaches its END line, else (a truncated paste) the
    # lines that follow the BEGIN line.  The body is base64 and gaps only and is never
    # given back, so the regex never searches on for an END line (it did, from every
    # BEGIN: 40 s for a megabyte of BEGIN lines).
    re.compile(
        rb"-----BEGIN (?P<kind>[A-Z0-9 ]{0,40}?)PRIVATE KEY(?: BLOCK)?-----" + _KEY_HEADERS
        + rb"(?P<secret>(?=" + _KEY_BODY + _KEY_END + rb")" + _KEY_BODY
        + rb"|" + _KEY_GAP + rb"{0,64}(?:" + _KEY_LINE + _KEY_GAP + rb"{1,64}){0,2048}"
        + _KEY_LAST_LINE
        # a PGP armour's checksum ("=AbCd") after its last line
        + rb"(?:" + _KEY_GAP + rb"{1,64}=[A-Za-z0-9+/]{4}(?![A-Za-z0-9+/=]))?)"
        rb"(?P<end>" + _KEY_END + rb")?"
    ),
    _private_key_block,
    exact_anchors=True,
    multiline=True,
    binary=True,
    normalise=_key_material,
    locate_whole_match=True,
)

CONTEXT_RULES: tuple[ContentRule, ...] = (
    ContentRule(
        RuleId.AWS_SECRET_ACCESS_KEY,
        (b"secret",),
        re.compile(
            rb"(?i:aws_?secret_?access_?key|secret_?access_?key|aws_?secret(?:_?key)?)"
            + _ASSIGN
            + rb"[\"']?(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        _mixed_base64_secret,
    ),
    ContentRule(
        RuleId.AZURE_STORAGE_ACCOUNT_KEY,
        (b"accountkey", b"storage"),
        re.compile(
            rb"(?i:AccountKey=|(?:azure|storage)[\w.-]{0,30}?key[\"']?[ \t]*[=:][ \t]*[\"']?)"
            rb"(?P<secret>[A-Za-z0-9+/]{86}==)"
        ),
        _min_entropy(4.5),
    ),
    ContentRule(
        RuleId.AZURE_STORAGE_ACCOUNT_KEY,
        (b"sharedaccesskey=",),
        re.compile(rb"(?i:SharedAccessKey=)(?P<secret>[A-Za-z0-9+/]{43}=)"),
        _min_entropy(4.0),
        detector="azure-shared-access-key",
        description="Azure Service Bus / Event Hubs shared access key",
    ),
    ContentRule(
        RuleId.AZURE_SAS_TOKEN,
        (b"sig=",),
        re.compile(rb"[?&]sig=(?P<secret>[A-Za-z0-9%+/]{40,120}(?:%3[Dd]|=){0,2})"),
        _sas_signature,
    ),
    ContentRule(
        RuleId.URL_PASSWORD,
        (b"://",),
        re.compile(
            rb"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s:@/\"'<>]{0,64}:"
            rb"(?P<secret>[^\s@/\"'<>]{1,128})@[A-Za-z0-9_.-]+"
        ),
        _url_password,
    ),
    ContentRule(
        RuleId.TWILIO_AUTH_TOKEN,
        (b"twilio",),
        re.compile(
            rb"(?i:twilio[\w.-]{0,30}?(?:auth_?token|token|secret))"
            + _ASSIGN
            + rb"[\"']?(?P<secret>[0-9a-f]{32})(?![0-9A-Za-z])"
        ),
        _min_entropy(3.0),
    ),
    ContentRule(
        RuleId.NPMRC_CREDENTIAL,
        (b"_auth", b"_password"),
        re.compile(
            rb"(?m)^[ \t]*(?:\S*:)?_(?:authToken|auth|password)[ \t]*=[ \t]*(?P<secret>\S+)"
        ),
        _credential_value,
        frozenset({".npmrc"}),
    ),
    ContentRule(
        RuleId.PYPIRC_CREDENTIAL,
        (b"password",),
        re.compile(rb"(?m)^[ \t]*password[ \t]*[=:][ \t]*(?P<secret>\S+)"),
        _credential_value,
        frozenset({".pypirc"}),
    ),
    ContentRule(
        RuleId.NETRC_CREDENTIAL,
        (b"password",),
        re.compile(rb"(?<![A-Za-z0-9_])password[ \t]+(?P<secret>\S+)"),
        _credential_value,
        frozenset({".netrc", "_netrc"}),
    ),
    ContentRule(
        RuleId.PASSWORD_ASSIGNMENT,
        (b"passw", b"passphrase", b"pwd", b"pw:", b"pw=", b"pw ", b"pw\"", b"pw'", b"secret",
         b"api_key", b"apikey", b"api-key", b"api.key",
         b"pass:", b"pass=", b"pass ", b"pass\"", b"pass'"),
        _named_assignment(
            rb"password|passwd|passphrase|pwd|(?<![A-Za-z0-9])pw|secret|secret[_.-]?key"
            rb"|api[_.-]?key|apikey"
            rb"|api[_.-]?secret|client[_.-]?secret|app[_.-]?secret|auth[_.-]?secret"
            # "pass" as a name's last word (db_pass, DB_PASS, dbPass: Ansible vars, dotenv,
            # mailer configs), not as the end of another word (bypass, compass)
            rb"|(?<![A-Za-z0-9])pass|(?-i:(?<=[a-z0-9])Pass)"
        ),
        _password_assignment,
        priority=PRIORITY_GENERIC,
    ),
    ContentRule(
        RuleId.PASSWORD_ASSIGNMENT,
        (b"passw", b"pwd", b"secret"),
        re.compile(
            rb"<(?P<name>(?i:[A-Za-z0-9_.:-]{0,40}?(?:password|passwd|pwd|secret)))>"
            rb"(?P<secret>[^<>\s]{1,200})</(?P=name)>"
        ),
        _literal_password,
        detector="xml-password-element",
        priority=PRIORITY_GENERIC,
    ),
    ContentRule(
        RuleId.PASSWORD_ASSIGNMENT,
        (b"identified", b"password"),
        re.compile(
            rb"(?i:\bidentified[ \t]+by|\b(?:with|encrypted|unencrypted)[ \t]+password)"
            rb"[ \t]+'(?P<secret>[^'\r\n]{1,200})'"
        ),
        _literal_password,
        detector="sql-password",
        priority=PRIORITY_GENERIC,
    ),
    ContentRule(
        RuleId.PASSWORD_ASSIGNMENT,
        (b"define", b"value=", b"value ="),
        re.compile(
            # define('DB_PASSWORD', '...') in PHP; <add key="DbPassword" value="..."/> in
            # .NET configuration: a name and its value, side by side
            rb"(?i:\bdefine[ \t]*\([ \t]*|\bkey[ \t]*=[ \t]*)"
            rb"[\"'](?P<name>[A-Za-z0-9_.:-]{0,40}?(?i:password|passwd|pwd|secret|auth_key"
            rb"|secure_auth_key|logged_in_key|nonce_key|api_?key|token)[A-Za-z0-9_]{0,20})[\"']"
            rb"(?:[ \t]*,[ \t]*|[ \t]+value[ \t]*=[ \t]*)"
            rb"(?:\"(?P<dq>[^\"\r\n]{1,200})\"|'(?P<sq>[^'\r\n]{1,200})')"
        ),
        _named_value,
        detector="named-value-password",
        priority=PRIORITY_GENERIC,
    ),
    ContentRule(
        RuleId.PASSWORD_ASSIGNMENT,
        (b"passw", b"pwd", b"secret", b"token", b"apikey", b"api_key"),
        re.compile(
            # an environment list (Kubernetes, compose, CI): `- name: DB_PASSWORD` and, on
            # the next line, `value: ...`: the name and its value, one above the other
            rb"\bname:[ \t]*[\"']?(?P<name>[A-Za-z0-9_.-]{0,40}?(?i:password|passwd|pwd|secret"
            rb"|api_?key|token)[A-Za-z0-9_]{0,20})[\"']?[ \t]*\r?\n[ \t]*value:[ \t]*"
            rb"(?:\"(?P<dq>[^\"\r\n]{1,200})\"|'(?P<sq>[^'\r\n]{1,200})'"
            rb"|(?P<bare>[^\s\"'#|>&*!{}\[\]][^\s#]{0,199}))[ \t]*(?:#[^\r\n]*)?(?:\r?\n|$)"
        ),
        _named_value,
        multiline=True,
        detector="env-list-password",
        priority=PRIORITY_GENERIC,
    ),
    ContentRule(
        RuleId.TOKEN_ASSIGNMENT,
        (b"token",) + tuple(f"{kind}{separator}key".encode() for kind in _SECRET_KEY_KINDS
                            for separator in ("", "_", ".", "-")),
        _named_assignment(
            rb"token|(?:" + "|".join(_SECRET_KEY_KINDS).encode() + rb")[_.-]?key"
        ),
        _token_assignment,
        priority=PRIORITY_GENERIC,
    ),
    ContentRule(
        RuleId.COMMAND_LINE_PASSWORD,
        (b"-u", b"--user", b"sshpass", b"mysql", b"mariadb"),
        re.compile(
            rb"(?:(?<=[ \t])(?:-u|--user)[ \t=]+[\"']?[\w.@+-]{1,64}:"
            rb"|(?<![\w-])sshpass[ \t]+-p[ \t]*[\"']?"
            rb"|(?<![\w-])(?:mysql|mysqldump|mariadb|mysqladmin)\b[^\n]{0,200}?[ \t]"
            rb"(?:-p|--password=))"
            rb"(?P<secret>[^\s\"'`;|&<>(),:]{1,128})"
        ),
        _literal_password,
        priority=PRIORITY_GENERIC,
    ),
    ContentRule(
        RuleId.REGISTRY_AUTH,
        (b"auth",),
        re.compile(rb"\"auth\"[ \t]*:[ \t]*\"(?P<secret>[A-Za-z0-9+/]{8,500}={0,2})\""),
        _registry_auth,
        frozenset({"config.json", ".dockercfg", "auth.json"}),
    ),
    ContentRule(
        RuleId.AUTHORIZATION_HEADER,
        (b"authorization",),
        re.compile(
            rb"(?i:authorization)[\"']?[ \t]{0,3}[:=][ \t]{0,3}[\"']?"
            rb"(?i:bearer|basic|token)[ \t]+(?P<secret>[A-Za-z0-9+/=_.~-]{16,500})"
        ),
        _authorization_header,
        priority=PRIORITY_GENERIC,
    ),
)

CONTENT_RULES: tuple[ContentRule, ...] = TOKEN_RULES + (PRIVATE_KEY_RULE,) + CONTEXT_RULES

# Base64 that decodes to "-----BEGIN": a PEM file stored base64-wrapped (Kubernetes
# Secrets, kubeconfig ``client-key-data``, CI variables).
BASE64_PEM_ANCHOR = b"LS0tLS1CRUdJTi"
# Where base64 values hold secrets by design: their decoded form is scanned too.
BASE64_CONTEXT_ANCHORS = (b"kind: Secret", b'"kind": "Secret"', b"-data:", b'-data":')
BASE64_VALUE = re.compile(
    rb"(?<![A-Za-z0-9+/])(?P<value>[A-Za-z0-9+/]{20,}={0,2})(?![A-Za-z0-9+/=])"
)


def detector_ids() -> frozenset[str]:
    """Every detector id a finding may carry (allowlists may name these)."""
    return frozenset(rule.detector for rule in CONTENT_RULES)


# --- file-name rules ---------------------------------------------------------------------------

SSH_PRIVATE_KEY_NAMES = frozenset(
    {"id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk", "id_xmss"}
)
# Key and password stores: PKCS#12, Java and Bouncy Castle key stores, Kerberos keytabs,
# KeePass databases.
KEYSTORE_EXTENSIONS = frozenset({".p12", ".pfx", ".jks", ".keystore", ".bks", ".keytab",
                                 ".kdbx", ".kdb"})
# PuTTY's private key files, whatever their name.
SSH_PRIVATE_KEY_EXTENSIONS = frozenset({".ppk"})
# .env variants that are committed on purpose as templates for the real one.
ENV_TEMPLATE_SUFFIXES = frozenset(
    {"example", "sample", "template", "dist", "defaults", "default", "schema", "tpl"}
)
DER_KEY_EXTENSIONS = frozenset({".key", ".pk8"})
_SERVICE_ACCOUNT_PRIVATE_KEY = re.compile(rb'"private_key"\s*:\s*"-----BEGIN')
# Names whose content rules differ (see ContentRule.basenames).
SPECIAL_BASENAMES = frozenset().union(*(rule.basenames for rule in CONTENT_RULES))


def name_rule(path: str) -> RuleId | None:
    """The rule a file's name alone triggers, if any."""
    return _name_rule(posixpath.basename(path))


@functools.lru_cache(maxsize=4096)
def _name_rule(base: str) -> RuleId | None:
    lower = base.lower()
    if lower == ".env" or (
        lower.startswith(".env.") and lower.split(".")[-1] not in ENV_TEMPLATE_SUFFIXES
    ):
        return RuleId.ENV_FILE
    extension = posixpath.splitext(lower)[1]
    if lower in SSH_PRIVATE_KEY_NAMES or extension in SSH_PRIVATE_KEY_EXTENSIONS:
        return RuleId.SSH_PRIVATE_KEY_FILE
    if extension in KEYSTORE_EXTENSIONS:
        return RuleId.KEYSTORE_FILE
    if _CREDENTIALS_NAME.fullmatch(lower):
        return RuleId.CREDENTIALS_FILE
    if lower == ".git-credentials":
        return RuleId.GIT_CREDENTIALS_FILE
    return None


_CREDENTIALS_NAME = re.compile(r"credentials.*\.json", re.DOTALL)
_SERVICE_ACCOUNT_NAME = re.compile(r"service.account.*\.json", re.DOTALL)


# A file named for the secret it keeps ("password.txt", "api_key", "db.secret", Rails'
# "master.key", ".pgpass"): a line that is nothing but a password or a token is that
# secret, with no assignment to say so.  Code and templates are named so for other reasons.
_SECRET_NAMED = re.compile(
    r"(?:.*[._-])?(?:passwords?|passwd|pass|pwd|secrets?|tokens?|api[_-]?keys?|apikey|"
    r"master|private|credentials?|pgpass)(?:[._-].*)?",
    re.DOTALL,
)
SECRET_NAMED_MAX_BYTES = 4096  # a kept password or token; anything longer is a document
SECRET_NAMED_MAX_LINES = 8


@functools.lru_cache(maxsize=4096)
def _is_secret_named(lower: str) -> bool:
    extension = posixpath.splitext(lower)[1]
    return (
        _SECRET_NAMED.fullmatch(lower) is not None
        and extension not in CODE_EXTENSIONS
        and extension.lstrip(".") not in ENV_TEMPLATE_SUFFIXES
    )


# Characters of structure (INI sections, assignments, YAML keys, markup), not of a password
# kept alone on its line.
_STRUCTURE = re.compile(rb"[=:\[\]{}()<>]")


def _holds_a_bare_secret(lower: str, data: bytes) -> bool:
    """A short text whose lines include one that is only a password or a token (in
    ``.pgpass``: the last field of ``host:port:database:user:password``)."""
    if len(data) > SECRET_NAMED_MAX_BYTES or b"\0" in data:
        return False
    lines = [line.strip() for line in data.splitlines() if line.strip()]
    if len(lines) > SECRET_NAMED_MAX_LINES:
        return False
    for line in lines:
        if lower == ".pgpass":
            if looks_like_password(line.rsplit(b":", 1)[-1]):
                return True
            continue
        value = line.strip(b"\"'")
        if looks_like_token(value) or (looks_like_password(value)
                                       and not _STRUCTURE.search(value)):
            return True
    return False


def name_and_content_rule(path: str, data: bytes) -> RuleId | None:
    """Rules that need both: a service-account JSON with its key, a DER-encoded private key,
    a file named for a secret that holds one as a bare line."""
    lower = posixpath.basename(path).lower()
    if _SERVICE_ACCOUNT_NAME.fullmatch(lower) and _SERVICE_ACCOUNT_PRIVATE_KEY.search(data):
        return RuleId.CREDENTIALS_FILE
    if posixpath.splitext(lower)[1] in DER_KEY_EXTENSIONS and is_der_sequence(data):
        return RuleId.KEYSTORE_FILE
    if _is_secret_named(lower) and _holds_a_bare_secret(lower, data):
        return RuleId.SECRET_NAMED_FILE
    return None


def content_profile(path: str) -> str:
    """What of a path's name the content scan depends on: equal profiles give equal
    content findings for equal bytes, so results are cached by (blob id, profile)."""
    return _content_profile(posixpath.basename(path))


@functools.lru_cache(maxsize=4096)
def _content_profile(base: str) -> str:
    lower = base.lower()
    extension = posixpath.splitext(lower)[1]
    return "|".join(
        (
            base if base in SPECIAL_BASENAMES else "",
            "code" if extension in CODE_EXTENSIONS else "",
            "sa" if _SERVICE_ACCOUNT_NAME.fullmatch(lower) else "",
            "der" if extension in DER_KEY_EXTENSIONS else "",
            "named" if _is_secret_named(lower) else "",
        )
    )


def is_der_sequence(data: bytes) -> bool:
    """Whether ``data`` is exactly one DER-encoded ASN.1 SEQUENCE, as a binary key file is.

    A PEM key in a .key file is the content rules' job; this catches the binary form,
    checking the encoded length so that text starting with "0" does not pass.
    """
    if len(data) < 2 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        return first == len(data) - 2
    width = first & 0x7F
    if not 1 <= width <= 4 or len(data) < 2 + width:
        return False
    return int.from_bytes(data[2 : 2 + width], "big") == len(data) - 2 - width
