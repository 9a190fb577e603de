"""``secfl measure``: stable for the same workload, different for any change, pinned format."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secfl.errors import MeasurementError
from secfl.tee import _measure as measure_mod
from secfl.tee._measure import FORMAT, canonical_manifest_bytes, manifest, measure

MAIN_PY = b"print('hello')\n"
README = "café ☕\n".encode()


def make_tree(parent: Path) -> Path:
    """app/{main.py 0644, run.sh 0755, data/ 0750, data/README 0600, current -> main.py}."""
    app = parent / "app"
    (app / "data").mkdir(parents=True)
    (app / "main.py").write_bytes(MAIN_PY)
    (app / "run.sh").write_bytes(b"#!/bin/sh\nexec python3 main.py\n")
    (app / "data/README").write_bytes(README)
    (app / "current").symlink_to("main.py")
    for path, mode in [
        (app, 0o755),
        (app / "data", 0o750),
        (app / "main.py", 0o644),
        (app / "run.sh", 0o755),
        (app / "data/README", 0o600),
    ]:
        path.chmod(mode)
    return app


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "one")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the format, pinned ------------------------------------------------------------


def test_known_answer(app: Path) -> None:
    """Recompute the digest from the documented format with nothing but hashlib and json."""
    run_sh = b"#!/bin/sh\nexec python3 main.py\n"
    expected_manifest = {
        "format": "secfl-measure/1",
        "entries": [
            {"path": "app", "type": "dir", "mode": "0755"},
            {"path": "app/current", "type": "symlink", "target": "main.py"},
            {"path": "app/data", "type": "dir", "mode": "0750"},
            {
                "path": "app/data/README",
                "type": "file",
                "mode": "0600",
                "size": len(README),
                "sha256": sha256(README),
            },
            {
                "path": "app/main.py",
                "type": "file",
                "mode": "0644",
                "size": len(MAIN_PY),
                "sha256": sha256(MAIN_PY),
            },
            {
                "path": "app/run.sh",
                "type": "file",
                "mode": "0755",
                "size": len(run_sh),
                "sha256": sha256(run_sh),
            },
        ],
        "command": ["python3", "app/main.py", "--rounds", "3", "two words"],
    }
    canonical = json.dumps(
        expected_manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    command = "python3 app/main.py  --rounds 3 'two words'"

    assert manifest([app], command) == expected_manifest
    assert canonical_manifest_bytes(manifest([app], command)) == canonical
    assert measure([app], command) == hashlib.sha384(canonical).hexdigest()
    # pinned literally too, so the test and the code cannot drift together
    assert measure([app], command) == (
        "726548de5116765f675a21b153ee485584cc267a2790e0f5"
        "6ede136d9b426b22952cc875d1098d0696948ee990a7c6c1"
    )


def test_file_argument_is_named_by_its_basename(app: Path) -> None:
    doc = manifest([app / "data/README"])
    assert doc == {
        "format": FORMAT,
        "entries": [
            {
                "path": "README",
                "type": "file",
                "mode": "0600",
                "size": len(README),
                "sha256": sha256(README),
            }
        ],
        "command": None,
    }


def test_entries_sorted_by_utf8_bytes_across_arguments(tmp_path: Path) -> None:
    for name in ["b", "a.txt", "Z", "é", "a"]:
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    (tmp_path / "z").mkdir()
    doc = manifest([tmp_path / "z", tmp_path / "in"])
    paths = [e["path"] for e in doc["entries"]]
    assert paths == ["in", "in/Z", "in/a", "in/a.txt", "in/b", "in/é", "z"]
    assert paths == sorted(paths, key=str.encode)


def test_relative_and_dot_arguments(app: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(app)
    assert manifest(["."])["entries"][0]["path"] == "app"
    assert measure(["."]) == measure([app]) == measure([str(app) + "/"])
    monkeypatch.chdir(app.parent)
    assert measure(["app"]) == measure([app])


def test_command_forms(app: Path) -> None:
    argv = ["python3", "-m", "secfl", "run", "a b"]
    assert manifest([app], "python3 -m secfl run 'a b'")["command"] == argv
    assert measure([app], '  python3   -m secfl\trun "a b" ') == measure([app], argv)
    assert measure([app], tuple(argv)) == measure([app], argv)
    assert manifest([app], [])["command"] == []
    assert measure([app], []) != measure([app], None)
    assert manifest([], "x")["entries"] == []


# --- stable ---------------------------------------------------------------------------


def test_same_input_same_digest(app: Path, tmp_path: Path) -> None:
    first = measure([app], "python3 main.py")
    assert measure([app], "python3 main.py") == first

    copy = shutil.copytree(app, tmp_path / "elsewhere/deeper/app", symlinks=True)
    for path in [copy, *copy.rglob("*")]:
        os.utime(path, (1_000_000, 2_000_000), follow_symlinks=False)
    assert measure([copy], "python3 main.py") == first


def test_nfc_and_nfd_names_measure_the_same(tmp_path: Path) -> None:
    name = "résumé.txt"
    for form, folder in [("NFC", "a"), ("NFD", "b")]:
        path = tmp_path / folder / "w" / unicodedata.normalize(form, name)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        path.chmod(0o644)
        path.parent.chmod(0o755)
    assert os.listdir(tmp_path / "a/w") != os.listdir(tmp_path / "b/w")
    assert measure([tmp_path / "a/w"]) == measure([tmp_path / "b/w"])
    assert manifest([tmp_path / "b/w"])["entries"][1]["path"] == "w/" + name


def test_large_file_is_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure_mod, "CHUNK_SIZE", 1000)
    data = os.urandom(10_500)
    (tmp_path / "big").write_bytes(data)
    entry = manifest([tmp_path / "big"])["entries"][0]
    assert (entry["size"], entry["sha256"]) == (len(data), sha256(data))


# --- sensitive to every change ------------------------------------------------------


def changes(app: Path, mutate: Callable[[], object]) -> bool:
    before = measure([app], "python3 main.py")
    mutate()
    return measure([app], "python3 main.py") != before


def test_a_changed_byte(app: Path) -> None:
    def flip() -> None:
        data = bytearray((app / "data/README").read_bytes())
        data[0] ^= 1
        (app / "data/README").write_bytes(bytes(data))

    assert changes(app, flip)


def test_a_chmod(app: Path) -> None:
    assert changes(app, lambda: (app / "main.py").chmod(0o600))


def test_a_folder_chmod(app: Path) -> None:
    assert changes(app, lambda: (app / "data").chmod(0o700))


def test_a_rename(app: Path) -> None:
    assert changes(app, lambda: (app / "run.sh").rename(app / "start.sh"))


def test_an_added_empty_folder(app: Path) -> None:
    assert changes(app, lambda: (app / "data/empty").mkdir())


def test_an_added_empty_file(app: Path) -> None:
    assert changes(app, lambda: (app / "data/empty").write_bytes(b""))


def test_a_symlink_retarget(app: Path) -> None:
    def retarget() -> None:
        (app / "current").unlink()
        (app / "current").symlink_to("run.sh")

    assert changes(app, retarget)


def test_a_symlink_is_not_followed(app: Path) -> None:
    # editing the target changes the digest only through the target's own entry
    doc = manifest([app])
    assert {"path": "app/current", "type": "symlink", "target": "main.py"} in doc["entries"]
    (app / "outside").symlink_to("/etc")
    assert {e["path"] for e in manifest([app])["entries"]} == {
        e["path"] for e in doc["entries"]
    } | {"app/outside"}


def test_a_changed_command(app: Path) -> None:
    assert measure([app], "python3 main.py") != measure([app], "python3 main.py --debug")
    assert measure([app], "python3 main.py") != measure([app], None)
    assert measure([app], ["a b"]) != measure([app], ["a", "b"])


def test_the_folder_name_counts(app: Path) -> None:
    renamed = app.rename(app.parent / "app2")
    assert measure([renamed]) != measure([make_tree(app.parent / "again")])


# --- refusals ---------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match=r"cannot read .*nope: No such file or directory"):
        measure([tmp_path / "nope"])


def test_same_name_twice(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    with pytest.raises(MeasurementError, match="would both be named 'app'"):
        measure([a, b])
    with pytest.raises(MeasurementError, match="would both be named 'app'"):
        measure([a, a])


def test_names_equal_after_nfc_refused(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    for form in ("NFC", "NFD"):
        (folder / unicodedata.normalize(form, "é")).write_bytes(form.encode())
    with pytest.raises(MeasurementError, match="two entries are named 'w/é'"):
        measure([folder])


def test_special_mode_bits_are_four_octal_digits(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w").chmod(0o1777)
    (tmp_path / "w/tool").write_bytes(b"")
    (tmp_path / "w/tool").chmod(0o4755)
    modes = [e["mode"] for e in manifest([tmp_path / "w"])["entries"]]
    assert modes == ["1777", "4755"]


def test_fifo_refused(app: Path) -> None:
    os.mkfifo(app / "data/pipe")
    with pytest.raises(MeasurementError, match=r"data/pipe is a FIFO; only files, folders"):
        measure([app])


def test_socket_refused() -> None:
    # AF_UNIX paths are short: bind in a short temporary folder
    with tempfile.TemporaryDirectory(dir="/tmp") as short, socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.join(short, "s"))
        with pytest.raises(MeasurementError, match="is a socket"):
            measure([Path(short)])


def test_device_refused() -> None:
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    with pytest.raises(MeasurementError, match="null is a character device"):
        measure(["/dev/null"])


def test_filesystem_root_has_no_name() -> None:
    with pytest.raises(MeasurementError, match="has no name"):
        measure(["/"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(app: Path) -> None:
    (app / "main.py").chmod(0)
    with pytest.raises(MeasurementError, match=r"cannot read .*main\.py: Permission denied"):
        measure([app])


def test_unreadable_file_even_as_root(app: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open
    denied = str(app / "main.py")

    def deny(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
        if str(path) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(measure_mod.os, "open", deny)
        with pytest.raises(MeasurementError) as info:
            measure([app])
    assert str(info.value) == f"measure: cannot read {denied}: Permission denied"


def test_non_utf8_name_refused(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    try:
        (folder / os.fsdecode(b"bad\xff")).write_bytes(b"")
    except (OSError, UnicodeError):
        pytest.skip("this filesystem refuses non-UTF-8 names")
    with pytest.raises(MeasurementError, match="is not valid UTF-8"):
        measure([folder])


def test_bad_commands(app: Path) -> None:
    with pytest.raises(MeasurementError, match="cannot split the command"):
        measure([app], "python3 'unclosed")
    with pytest.raises(MeasurementError, match="must be strings, not int"):
        measure([app], ["python3", 3])  # type: ignore[list-item]


# --- property: any names and contents ----------------------------------------------------

_NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 200)


def _nfc_unique(names: list[str]) -> bool:
    return len({unicodedata.normalize("NFC", n) for n in names}) == len(names)


_TREE = st.dictionaries(_NAME, st.binary(max_size=300), max_size=6).filter(
    lambda d: _nfc_unique(list(d))
)


def _write(root: Path, files: dict[str, bytes], sub: dict[str, bytes], reverse: bool) -> None:
    root.mkdir()
    root.chmod(0o755)
    (root / "sub").mkdir()
    (root / "sub").chmod(0o755)
    items = [(root / k, v) for k, v in files.items()] + [
        (root / "sub" / k, v) for k, v in sub.items()
    ]
    for path, data in reversed(items) if reverse else items:
        path.write_bytes(data)
        path.chmod(0o640)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=_TREE, sub=_TREE, cmd=st.lists(st.text(max_size=8), max_size=4))
def test_any_names_and_contents_give_a_stable_digest(
    files: dict[str, bytes], sub: dict[str, bytes], cmd: list[str]
) -> None:
    files = {k: v for k, v in files.items() if unicodedata.normalize("NFC", k) != "sub"}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        _write(Path(a) / "w", files, sub, reverse=False)
        _write(Path(b) / "w", files, sub, reverse=True)
        digest = measure([Path(a) / "w"], cmd)
        assert measure([Path(b) / "w"], cmd) == digest

        expected = [{"path": "w", "type": "dir", "mode": "0755"}]
        expected.append({"path": "w/sub", "type": "dir", "mode": "0755"})
        for prefix, tree in (("w/", files), ("w/sub/", sub)):
            expected += [
                {
                    "path": prefix + unicodedata.normalize("NFC", k),
                    "type": "file",
                    "mode": "0640",
                    "size": len(v),
                    "sha256": sha256(v),
                }
                for k, v in tree.items()
            ]
        expected.sort(key=lambda e: e["path"].encode())
        doc = {"format": FORMAT, "entries": expected, "command": cmd}
        assert digest == hashlib.sha384(canonical_manifest_bytes(doc)).hexdigest()
