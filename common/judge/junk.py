"""Editor, tool and system scratch files: never committed, wherever they are (decided once,
by the watcher, and carried on the Change)."""
from __future__ import annotations

import re

# (basename pattern, reason), first match wins; these files are editors' scratch.
_EDITOR_JUNK = (
    # vim swap files: .name.swp, then .swo, .swn ... .swa when several exist; .swx probes.
    (r"\..+\.sw[a-px]", "vim swap file"),
    (r"4913", "vim write-test file"),
    (r".+~", "editor backup file"),
    (r"\.#.*", "emacs lock file"),
    (r"#.*#", "emacs auto-save file"),
    (r"\.goutputstream-.*", "GIO temporary file"),
    (r".+\.kate-swp", "Kate swap file"),
    (r".+\.save(?:\.[0-9]+)?", "nano emergency save"),
    (r".+___jb_(?:tmp|old|bak)___", "JetBrains safe-write file"),
    (r"\.~lock\..+#", "LibreOffice lock file"),
    (r"~\$.+", "Microsoft Office owner file"),
    (r"\.nfs[0-9a-f]{8,}", "NFS silly-renamed file"),
    (r".+\.(?:crdownload|part)", "download in progress"),
    (r".+\.tmp", "temporary file"),
    (r".+\.bak", "backup file"),
    (r".+\.(?:orig|rej)", "merge/patch leftover"),
    # What the operating system and interpreters leave beside files: never anyone's work.
    (r"\.DS_Store|[Tt]humbs\.db|ehthumbs(?:_vista)?\.db|[Dd]esktop\.ini|\.directory",
     "file manager metadata"),
    (r".+\.py[co]", "compiled Python"),
)
# One pattern of them all, each its own group: the watcher asks about every path it
# reports (thousands a second in a storm), and one match costs about a tenth of 18.
_JUNK_NAME = re.compile("|".join(f"(?P<j{number}>{pattern})" for number, (pattern, _)
                                 in enumerate(_EDITOR_JUNK)), re.DOTALL)
_JUNK_KIND = {f"j{number}": kind for number, (_, kind) in enumerate(_EDITOR_JUNK)}
_BYTECODE_DIRECTORY = "/__pycache__/"


def editor_junk(path: str) -> str:
    """What kind of editor, tool or system scratch ``path``'s file name is ('' when it is
    none)."""
    found = _JUNK_NAME.fullmatch(path.rsplit("/", 1)[-1])
    if found is not None:
        return _JUNK_KIND[found.lastgroup]
    if _BYTECODE_DIRECTORY in f"/{path}":
        return "compiled Python"
    return ""
