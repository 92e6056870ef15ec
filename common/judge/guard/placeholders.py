"""Telling a real secret from the example, template or reference that stands in for one.

Documentation, templates and tests are full of token-shaped text (``AKIA...EXAMPLE``,
``ghp_xxxx``, ``${DB_PASSWORD}``, ``postgres://user:password@localhost``). Holding those
would teach people to release holds without reading them, so every match passes these
checks before it becomes a finding. The markers are long enough (or carry punctuation
that token alphabets lack) that a random token contains one with a probability far
below one in a million.
"""

import base64
import binascii
import math
import re
from collections import Counter

_PLACEHOLDER_MARKERS = re.compile(
    rb"(?i)example|placeholder|changeme|change[_-]me|redacted|dummy"
    rb"|x{6,}|\*{3,}|\.\.\.|<[^>\s]*>|\$\{|\{\{|%\(|\$\(|#\{"
    rb"|your[_-]|[_-]here(?![a-z0-9])|insert[_-]|replace[_-]?me|0{8,}|12345678|abcdefgh"
)

# Values that configuration samples and local development defaults use for passwords.
COMMON_PASSWORDS = frozenset(
    p.encode()
    for p in """
    password passw0rd p@ssw0rd p@ssword password1 password12 password123 pass pass123 pass1234
    passwd pwd changeme changeme1 changeme123 secret secret1 secret12 secret123 admin admin1
    admin123 admin1234 administrator root toor test test123 test1234 testing testpass testpassword
    guest letmein qwerty qwerty123 welcome welcome1 default postgres mysql redis hunter2 mongo
    123456 12345678 123456789 1234567890 user username foobar foo bar baz none null empty
    sample mypassword yourpassword s3cr3t secretpassword supersecret topsecret
""".split()
)

# How stored password hashes start: a hash is not the password.
_HASH_PREFIXES = (
    b"$2a$",
    b"$2b$",
    b"$2y$",
    b"$argon2",
    b"$5$",
    b"$6$",
    b"$y$",
    b"$1$",
    b"pbkdf2",
    b"argon2",
    b"bcrypt$",
    b"sha1$",
    b"sha256:",
    b"sha512:",
    b"{ssha}",
    b"{sha}",
)

# References to a value kept elsewhere: an environment variable, a vault, a template.
_REFERENCE_START = (b"$", b"%", b"{", b"<", b"@", b"&", b"*")
_REFERENCE_MARKERS = (
    b"os.environ",
    b"process.env",
    b"getenv",
    b"env[",
    b"env(",
    b"secrets.",
    b"vault:",
    b"${",
    b"{{",
    b"#{",
    b"$(",
)

# A value naming what it stands for ("generatedwebdavpassword1") describes, it does not hide.
_DESCRIPTIVE = re.compile(rb"(?i)passw(?:or)?d|secret")
_DESCRIPTIVE_TOKEN = re.compile(rb"(?i)passw(?:or)?d|secret|token")
# A value that reads as a name refers to a secret kept elsewhere: dotted, snake or kebab
# words ("my.vault.path", "MY_SECRET_NAME") or camel and Pascal case ("getUserName",
# "HTTPServer2").  Its words are letters, a run of digits only ending one, and a capital
# starts a word of three letters or more, or an acronym.  A random string fails that: it
# puts digits inside its words and changes case every letter or two (one in three random
# 20-character passwords read as camel case before, and were pushed).
_NAME_WORD = rb"(?:[A-Z][a-z]{2,}|[A-Z]{2,}(?=[A-Z][a-z]|[0-9]|\Z))"
_IDENTIFIER_LIKE = re.compile(
    rb"(?:[a-z]+[0-9]*|[0-9]+)(?:[_.\-](?:[a-z]+[0-9]*|[0-9]+))+"
    rb"|(?:[A-Z]+[0-9]*|[0-9]+)(?:[_.\-](?:[A-Z]+[0-9]*|[0-9]+))+"
    rb"|[a-z]+" + _NAME_WORD + rb"+[0-9]{0,3}"
    rb"|" + _NAME_WORD + rb"{2,}[0-9]{0,3}"
    rb"|[A-Z]?[a-z]+"
)


_ACRONYM = re.compile(rb"[A-Z]{2,}")
_SEPARATOR = re.compile(rb"[_.\-]")


def _reads_as_name(value: bytes) -> bool:
    """Whether ``value`` is a name rather than a random string: it must have a name's shape
    and, run together in camel case, a word's vowels (English words are about two fifths
    vowels, random letters a fifth; acronyms are left out of the count)."""
    if not _IDENTIFIER_LIKE.fullmatch(value):
        return False
    if _SEPARATOR.search(value):
        return True
    letters = _ACRONYM.sub(b"", value).lower()
    letters = bytes(c for c in letters if 97 <= c <= 122)
    return not letters or sum(c in b"aeiouy" for c in letters) * 10 >= 3 * len(letters)


def shannon_entropy(data: bytes) -> float:
    """Bits per byte of ``data``'s own byte distribution."""
    if not data:
        return 0.0
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in Counter(data).values())


def looks_like_placeholder(secret: bytes) -> bool:
    """True for text that stands in for a token: example markers, masks, repeated characters."""
    if _PLACEHOLDER_MARKERS.search(secret):
        return True
    most_common = Counter(secret).most_common(1)
    return not most_common or most_common[0][1] * 2 > len(secret)


def looks_like_password_placeholder(value: bytes) -> bool:
    """Stricter check for free-form passwords, which have no token format to lean on."""
    lowered = value.lower()
    return (
        looks_like_placeholder(value)
        or lowered in COMMON_PASSWORDS
        or lowered.startswith(_REFERENCE_START)
        or any(marker in lowered for marker in _REFERENCE_MARKERS)
        or lowered.startswith(_HASH_PREFIXES)
    )


def looks_like_password(value: bytes) -> bool:
    """Whether a value assigned to a password-like key reads as a literal secret.

    It must not be a placeholder or a reference, must mix at least two kinds of
    character, must not read as an identifier, path or URL, and must carry some
    entropy. Whitespace rules it out: such values are messages, not passwords.
    """
    if not 8 <= len(value) <= 128 or looks_like_password_placeholder(value):
        return False
    if any(c in value for c in b" \t") or b"://" in value or value.startswith((b"/", b"./", b"~/")):
        return False
    if _reads_as_name(value) or _DESCRIPTIVE.search(value) or _encodes_prose(value):
        return False
    kinds = sum(
        (
            any(chr(c).islower() for c in value),
            any(chr(c).isupper() for c in value),
            any(chr(c).isdigit() for c in value),
            any(not chr(c).isalnum() for c in value),
        )
    )
    return kinds >= 2 and shannon_entropy(value) >= 2.5


# What a token is made of: base64 (plain and URL-safe), hex, and the separators of the
# providers' formats.  Anything else (spaces, braces, "$") makes a value an expression.
_TOKEN_CHARACTERS = re.compile(rb"[A-Za-z0-9+/=_.~-]+")
# A UUID under a token name is an idempotency or change token far more often than a key.
_UUID = re.compile(rb"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def looks_like_token(value: bytes) -> bool:
    """Whether a value assigned to a token- or key-like name reads as a literal token: 16
    to 500 token characters, not a placeholder, reference or name, mixing letters with
    digits or symbols, with the entropy of a random string (32 random hex digits carry
    about 3.7 bits a character, English words about 3)."""
    if not 16 <= len(value) <= 500 or not _TOKEN_CHARACTERS.fullmatch(value) \
            or _UUID.fullmatch(value):
        return False
    if looks_like_password_placeholder(value) or _reads_as_name(value.lstrip(b"_")) \
            or _DESCRIPTIVE_TOKEN.search(value) or _encodes_prose(value):
        return False
    letters = any(chr(c).isalpha() for c in value)
    others = any(not chr(c).isalpha() for c in value)
    return letters and others and shannon_entropy(value) >= 3.3


def _encodes_prose(value: bytes) -> bool:
    """Base64 of a phrase ("not my real password") is an example, not a password."""
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return (
        decoded.isascii()
        and decoded.decode().isprintable()
        and (b" " in decoded or _DESCRIPTIVE.search(decoded) is not None)
    )
