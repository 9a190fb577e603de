"""Shielded volumes: encrypted, authenticated code and data, opened only inside a TEE.

A volume is one file holding a directory tree: every file cut into chunks sealed
with AES-256-GCM, and a sealed manifest (paths, modes, sizes, SHA-256 of each
file). Its *tag*, the SHA-256 of the canonical manifest, is what a policy and an
SPM counter pin. Tampering, truncation, reordering, a wrong key or an unexpected
tag is a :class:`~secfl.errors.ShieldError` naming what failed. Files stream with
bounded memory, and code can be imported from memory with :class:`VolumeImporter`.
The format is described in :mod:`secfl.shield._format`.
"""

from __future__ import annotations

from secfl.errors import ShieldError
from secfl.shield._chunk_source import FileEntry
from secfl.shield._encrypt import encrypt_directory, encrypt_files
from secfl.shield._format import DEFAULT_CHUNK_SIZE, FORMAT
from secfl.shield._importer import VolumeImporter, VolumePath
from secfl.shield._keys import generate_key, key_from_file, load_key, write_key_file
from secfl.shield._reader import VolumeFile
from secfl.shield._volume import Volume, peek_tag, volume_tag

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT",
    "FileEntry",
    "ShieldError",
    "Volume",
    "VolumeFile",
    "VolumeImporter",
    "VolumePath",
    "encrypt_directory",
    "encrypt_files",
    "generate_key",
    "key_from_file",
    "load_key",
    "peek_tag",
    "volume_tag",
    "write_key_file",
]
