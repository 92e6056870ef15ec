"""Editor, tool and system scratch files: never committed, wherever they are (decided once,
by the watcher, and carried on the Change)."""
from __future__ import annotations

import re

# (compiled basename pattern, reason) checked in order; these files are editors' scratch.
_EDITOR_JUNK = tuple((re.compile(pattern, re.DOTALL), reason) for pattern, reason in (
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
))
_BYTECODE_DIRECTORY = "/__pycache__/"


def editor_junk(path: str) -> str:
    """What kind of editor, tool or system scratch ``path``'s file name is ('' when it is
    none)."""
    name = path.rsplit("/", 1)[-1]
    for pattern, kind in _EDITOR_JUNK:
        if pattern.fullmatch(name):
            return kind
    if _BYTECODE_DIRECTORY in f"/{path}":
        return "compiled Python"
    return ""
