"""Pure logic: decoding system call arguments, the BPF program's shape, path resolution."""
from __future__ import annotations

import os
import struct

import pytest

from gitsieve.common.agent.decode import (
    ExecProbe,
    Target,
    decode,
    decoders_for,
    open_op,
    signed_int,
)
from gitsieve.common.agent.journal import Op
from gitsieve.common.agent.resolve import Resolver
from gitsieve.common.agent.seccomp import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    Call,
    UnsupportedArchitecture,
    build_filter,
    host_tables,
)

MASK64 = (1 << 64) - 1
CWD = AT_FDCWD & MASK64


class FakeMemory:
    """A caller's memory: address -> string, or the 64-bit word at an address."""

    def __init__(self, strings: dict[int, bytes], words: dict[int, int] | None = None):
        self.strings, self.words = strings, words or {}
        self.reads: list[int] = []

    def read_cstring(self, pid: int, address: int) -> bytes | None:
        self.reads.append(address)
        return self.strings.get(address)

    def read_u64(self, pid: int, address: int) -> int | None:
        return self.words.get(address)


@pytest.mark.parametrize("flags, op", [
    (os.O_RDONLY, None), (os.O_RDONLY | os.O_APPEND, None),
    (os.O_WRONLY, Op.OPEN_WRITE), (os.O_RDWR, Op.OPEN_WRITE),
    (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, Op.CREATE), (os.O_RDWR | os.O_TRUNC, Op.TRUNCATE),
    (os.O_WRONLY | os.O_TMPFILE, None),  # its name arrives by linkat
])
def test_open_flags_decide_the_operation(flags, op):
    assert open_op(flags) is op


def test_a_read_only_open_reads_no_memory():
    memory = FakeMemory({100: b"f"})
    assert decode(Call.OPENAT, (CWD, 100, os.O_RDONLY, 0, 0, 0), MASK64, memory, 1).targets == ()
    assert memory.reads == []


def test_openat_with_a_dirfd_and_nofollow():
    memory = FakeMemory({100: b"sub/f"})
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    decoded = decode(Call.OPENAT, (7, 100, flags, 0o644, 0, 0), MASK64, memory, 1)
    assert decoded.targets == (Target(Op.CREATE, 7, b"sub/f", False),)


def test_openat2_reads_its_flags_from_open_how():
    memory = FakeMemory({100: b"f"}, {200: os.O_RDWR})
    decoded = decode(Call.OPENAT2, (CWD, 100, 200, 24, 0, 0), MASK64, memory, 1)
    assert decoded.targets == (Target(Op.OPEN_WRITE, AT_FDCWD, b"f", True),)
    read_only = FakeMemory({100: b"f"}, {200: os.O_RDONLY})
    assert decode(Call.OPENAT2, (CWD, 100, 200, 24, 0, 0), MASK64, read_only, 1).targets == ()
    unreadable = decode(Call.OPENAT2, (CWD, 100, 300, 24, 0, 0), MASK64, memory, 1)
    assert unreadable.unreadable == 1 and unreadable.targets == ()


def test_renameat2_names_both_sides():
    memory = FakeMemory({100: b"old", 200: b"new"})
    decoded = decode(Call.RENAMEAT2, (3, 100, 4, 200, 0, 0), MASK64, memory, 1)
    assert decoded.targets == (Target(Op.RENAME_FROM, 3, b"old", False),
                               Target(Op.RENAME_TO, 4, b"new", False))


def test_link_and_symlink_record_the_new_name():
    memory = FakeMemory({100: b"existing", 200: b"new-name"})
    assert decode(Call.LINKAT, (CWD, 100, CWD, 200, 0, 0), MASK64, memory, 1).targets == (
        Target(Op.LINK, AT_FDCWD, b"new-name", False),)
    assert decode(Call.SYMLINKAT, (100, 5, 200, 0, 0, 0), MASK64, memory, 1).targets == (
        Target(Op.SYMLINK, 5, b"new-name", False),)


def test_fd_calls_target_the_fd():
    decoded = decode(Call.FTRUNCATE, (9, 0, 0, 0, 0, 0), MASK64, FakeMemory({}), 1)
    assert decoded.targets == (Target(Op.TRUNCATE, 9, None, True),)


def test_fchmodat2_empty_path_and_nofollow():
    memory = FakeMemory({100: b"", 200: b"link"})
    assert decode(Call.FCHMODAT2, (6, 100, 0o644, AT_EMPTY_PATH, 0, 0), MASK64, memory,
                  1).targets == (Target(Op.CHMOD, 6, None, True),)
    assert decode(Call.FCHMODAT2, (6, 100, 0o644, 0, 0, 0), MASK64, memory, 1).targets == ()
    assert decode(Call.FCHMODAT2, (CWD, 200, 0o644, AT_SYMLINK_NOFOLLOW, 0, 0), MASK64,
                  memory, 1).targets == (Target(Op.CHMOD, AT_FDCWD, b"link", False),)


def test_empty_and_unreadable_names():
    memory = FakeMemory({100: b""})
    assert decode(Call.UNLINK, (100, 0, 0, 0, 0, 0), MASK64, memory, 1).targets == ()
    decoded = decode(Call.RENAME, (100, 999, 0, 0, 0, 0), MASK64, memory, 1)
    assert decoded.targets == () and decoded.unreadable == 1


def test_exec_is_a_probe_not_a_record():
    memory = FakeMemory({100: b"/usr/bin/passwd"})
    decoded = decode(Call.EXECVEAT, (4, 100, 0, 0, 0, 0), MASK64, memory, 1)
    assert decoded.exec_probe == ExecProbe(4, b"/usr/bin/passwd") and decoded.targets == ()


def test_i386_pointers_are_masked_to_32_bits():
    memory = FakeMemory({0x1000: b"f"})
    decoded = decode(Call.OPEN, ((0xFFFF << 32) | 0x1000, os.O_WRONLY, 0, 0, 0, 0),
                     0xFFFFFFFF, memory, 1)
    assert decoded.targets == (Target(Op.OPEN_WRITE, AT_FDCWD, b"f", True),)


def test_signed_int_reads_a_c_int_from_its_register():
    assert signed_int(CWD) == AT_FDCWD
    assert signed_int(0xFFFFFF9C) == AT_FDCWD
    assert signed_int(5) == 5


def test_every_watched_number_has_a_decoder_except_io_uring():
    for table in host_tables("x86_64").all + host_tables("aarch64").all:
        decoders = decoders_for(table)
        assert {table.calls[nr] for nr in set(table.calls) - set(decoders)} == {
            Call.IO_URING_SETUP}


def test_the_filter_program_is_well_formed():
    for machine in ("x86_64", "aarch64"):
        program = build_filter(host_tables(machine))
        assert len(program) % 8 == 0 and len(program) // 8 < 256
        for index in range(len(program) // 8):
            code, jt, jf, _k = struct.unpack_from("=HBBI", program, index * 8)
            # every jump lands inside the program
            assert index + 1 + max(jt, jf) < len(program) // 8 or code == 0x06


def test_other_architectures_are_refused():
    with pytest.raises(UnsupportedArchitecture):
        host_tables("riscv64")


def test_resolver_keeps_workspace_paths_only(tmp_path):
    workspace = tmp_path / "ws"
    (workspace / ".git").mkdir(parents=True)
    (workspace / "dir").mkdir()
    (tmp_path / "alias").symlink_to(workspace)
    (workspace / "dir" / "link").symlink_to("../target")
    resolver = Resolver(workspace)
    assert resolver.relative(os.fsencode(workspace / "a")) == b"a"
    assert resolver.relative(os.fsencode(workspace / ".git" / "x")) is None
    assert resolver.relative(os.fsencode(workspace)) is None
    assert resolver.relative(os.fsencode(tmp_path / "wsx")) is None
    canonical = resolver.canonical(os.fsencode(tmp_path / "alias" / "dir" / "new"), True)
    assert canonical == os.fsencode(workspace / "dir" / "new")
    assert resolver.canonical(os.fsencode(workspace / "dir" / "link"), True) == os.fsencode(
        workspace / "target")
    assert resolver.canonical(os.fsencode(workspace / "dir" / "link"), False) == os.fsencode(
        workspace / "dir" / "link")
    assert resolver.canonical(os.fsencode(workspace / "missing" / "f"), True) is None
