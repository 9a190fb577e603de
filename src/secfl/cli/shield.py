"""``secfl shield``: encrypted volumes for code and data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from secfl._internal.compiled import first_compiled, is_compiled
from secfl._internal.values import shown
from secfl.cli._common import err, out
from secfl.errors import UsageError

__all__ = [
    "ExpectTag",
    "KeyFile",
    "KeyHex",
    "app",
    "decrypt_cmd",
    "encrypt_cmd",
    "keygen_cmd",
    "ls_cmd",
    "tag_cmd",
    "verify_cmd",
]

app = typer.Typer(
    help="Shielded volumes: encrypt a folder, print or check its tag, decrypt it.",
    no_args_is_help=True,
)

KeyFile = Annotated[
    str | None, typer.Option("--key-file", help="File holding the key (64 hex characters).")
]
ExpectTag = Annotated[
    str | None, typer.Option("--expect-tag", help="Refuse unless the tag is this one.")
]
KeyHex = Annotated[
    str | None,
    typer.Option(
        "--key-hex", help="The key as 64 hex characters (visible in `ps`; prefer a file)."
    ),
]


def _key(key_file: str | None, key_hex: str | None) -> bytes:
    from secfl.shield import key_from_file, load_key

    if (key_file is None) == (key_hex is None):
        raise UsageError("give the key with exactly one of --key-file KEY or --key-hex HEX")
    return key_from_file(key_file) if key_file is not None else load_key(key_hex or "")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once resolved, or the
    same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):  # (Path.resolve raises on a link loop)
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _named(path: str, option: str, what: str) -> None:
    """An empty path (an unset variable in a script: ``-o "$OUT"``) is refused: as the
    current folder, it decrypted plaintext there (found by a review)."""
    if not path:
        raise UsageError(f"{option}: the path is empty; name {what}")


def _check_output(output: str, key_file: str | None, force: bool) -> None:
    """The volume never replaces its own key file, and another file only with --force."""
    if key_file is not None and _same_file(Path(output), Path(key_file)):
        raise UsageError(
            f"--output: '{output}' is the key file '{key_file}'; writing the volume there "
            "would destroy the key: choose another output"
        )
    if os.path.lexists(output) and not force:
        raise UsageError(f"--output: '{output}' exists; use --force to replace it")


def _check_compiled(src_dir: str, allowed: bool) -> None:
    """Compiled code is refused unless --allow-compiled: Python runs a module's
    ``__pycache__`` bytecode (unchecked-hash) or a compiled ``NAME.so`` in place of the
    ``NAME.py`` reviewers read, under the volume's approved tag; a test run leaves the
    former in a code folder unasked (:mod:`secfl._internal.compiled`)."""
    found = None if allowed else first_compiled(src_dir)
    if found is not None:
        raise UsageError(
            f"SRC_DIR: '{shown(found)}' is compiled Python code, which runs in place of or "
            "beside the sources reviewers read: remove it (and every __pycache__ folder), "
            "or pass --allow-compiled if the volume must ship it"
        )


@app.command("encrypt")
def encrypt_cmd(
    src_dir: Annotated[str, typer.Argument(help="The folder to encrypt.")],
    output: Annotated[str, typer.Option("-o", "--output", help="The volume file to write.")],
    key_file: KeyFile = None,
    key_hex: KeyHex = None,
    version: Annotated[
        int, typer.Option(help="Release number of this data; raise it for every new release.")
    ] = 1,
    chunk_kib: Annotated[int, typer.Option(help="Chunk size in KiB.")] = 1024,
    force: Annotated[
        bool, typer.Option(help="Replace an existing output file (never the key file).")
    ] = False,
    allow_compiled: Annotated[
        bool,
        typer.Option(
            help="Take Python bytecode (__pycache__, .pyc, .pyo) and compiled extension "
            "modules (.so, .pyd) too: Python runs them in place of, or beside, the sources."
        ),
    ] = False,
) -> None:
    """Encrypt every file below SRC_DIR into one volume; print its tag."""
    from secfl.shield import encrypt_directory

    _named(src_dir, "SRC_DIR", "the folder to encrypt")
    key = _key(key_file, key_hex)
    if not 1 <= chunk_kib <= 1 << 16:
        raise UsageError(f"--chunk-kib: {chunk_kib} is not from 1 to 65536")
    _check_output(output, key_file, force)
    _check_compiled(src_dir, allow_compiled)
    tag = encrypt_directory(
        src_dir, output, key, version=version, chunk_size=chunk_kib * 1024, overwrite=force
    )
    out.print(tag, markup=False)


@app.command("tag")
def tag_cmd(
    volume: Annotated[str, typer.Argument(help="The volume file.")],
    key_file: KeyFile = None,
    key_hex: KeyHex = None,
) -> None:
    """Print the volume's tag (the SHA-256 of its manifest, what a policy pins)."""
    from secfl.shield import volume_tag

    out.print(volume_tag(volume, _key(key_file, key_hex)), markup=False)


@app.command("verify")
def verify_cmd(
    volume: Annotated[str, typer.Argument(help="The volume file.")],
    key_file: KeyFile = None,
    key_hex: KeyHex = None,
    expect_tag: ExpectTag = None,
) -> None:
    """Authenticate every chunk of every file and check every file's SHA-256."""
    from secfl.shield import Volume

    with Volume.open(volume, _key(key_file, key_hex), expected_tag=expect_tag) as vol:
        vol.verify()
        out.print(
            f"verify: OK, {len(vol.files)} files, {vol.total_size} bytes, "
            f"version {vol.version}, tag {vol.tag}",
            markup=False,
        )


@app.command("decrypt")
def decrypt_cmd(
    volume: Annotated[str, typer.Argument(help="The volume file.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Folder to decrypt into.")],
    key_file: KeyFile = None,
    key_hex: KeyHex = None,
    expect_tag: ExpectTag = None,
) -> None:
    """Decrypt the volume's files below a folder (never overwriting a file)."""
    from secfl.shield import Volume

    _named(output, "--output", "the folder to decrypt into")
    with Volume.open(volume, _key(key_file, key_hex), expected_tag=expect_tag) as vol:
        vol.extract(output)
        out.print(
            f"decrypted {len(vol.files)} files, {vol.total_size} bytes, to {output}",
            markup=False,
        )
        paths = [entry.path for entry in vol.files]
        _note_compiled("shield decrypt", paths, f"the first '{shown(_first(paths))}'")


def _first(paths: list[str]) -> str:
    """The first compiled path of ``paths`` in sorted order ("" if none)."""
    return min((p for p in paths if is_compiled(p)), default="")


def _note_compiled(command: str, paths: list[str], which: str) -> None:
    """Tell whoever reviews a volume (stderr, one line) that it holds compiled code,
    which the sources they read do not show (made with ``encrypt --allow-compiled``
    or another tool)."""
    compiled = sum(is_compiled(p) for p in paths)
    if compiled:
        err.print(
            f"{command}: {compiled} compiled file(s), {which}: Python runs them in place of "
            "or beside the sources; review them, or refuse the volume",
            markup=False,
        )


@app.command("ls")
def ls_cmd(
    volume: Annotated[str, typer.Argument(help="The volume file.")],
    key_file: KeyFile = None,
    key_hex: KeyHex = None,
) -> None:
    """List the files of a volume: mode, size, SHA-256, path."""
    from secfl.shield import Volume

    with Volume.open(volume, _key(key_file, key_hex)) as vol:
        out.print(f"version {vol.version}, tag {vol.tag}", markup=False)
        for entry in vol.files:
            mark = "  (compiled)" if is_compiled(entry.path) else ""
            out.print(
                f"{entry.mode:04o} {entry.size:>12} {entry.sha256} {shown(entry.path)}{mark}",
                markup=False,
            )
        _note_compiled("shield ls", [entry.path for entry in vol.files], "marked (compiled)")


@app.command("keygen")
def keygen_cmd(
    output: Annotated[str, typer.Option("-o", "--output", help="The key file to create.")],
) -> None:
    """Create a new random 256-bit volume key, as hex, in a new file of mode 0600."""
    from secfl.shield import write_key_file

    write_key_file(output)
    out.print(f"key written to {output} (mode 0600)", markup=False)
