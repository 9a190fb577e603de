"""Whether another local user could change what is in a folder.

Plaintext (a decrypted volume, a site's data split before it is shielded) is written
only into folders no other user owns or may write in: such a user could plant the
names it goes to, rename or replace what lands there, or (owning the folder) open it
up and read it.
"""

from __future__ import annotations

import os
import stat

__all__ = ["foreign_writer"]


def foreign_writer(folder: int) -> str | None:
    """Why another user may write in the open ``folder`` (None: only this user can).

    The answer reads as the end of a sentence about the folder: "belongs to another
    user (uid 1001)", "can be written by every user (mode 1777)"."""
    st = os.fstat(folder)
    if st.st_uid != os.geteuid():
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & stat.S_IWOTH:
        return f"can be written by every user (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
