"""A safe YAML loader whose scanning and parsing run in libyaml's C code when PyYAML has it.

PyYAML's pure-Python scanner and parser read some 25 000 values a CPU-second: a
policy document of 100 000 values (the most one may hold) took 4-5 s of the SPM's
CPU to read, and to refuse, for anyone who submits one (found by a review). With
libyaml (``yaml.__with_libyaml__``) the events come from C, five times cheaper;
composing them into nodes and constructing values stays PyYAML's Python code, so a
subclass's hooks (``compose_node``, constructors, resolvers) see the same events,
nodes and values as with ``yaml.SafeLoader``, and refuse the same things. Without
libyaml this is ``yaml.SafeLoader`` itself.

:func:`source_of` gives the text an event was read from, as written (the C parser's
marks hold only positions, no buffer): both parsers count them in characters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

__all__ = ["WITH_LIBYAML", "FastSafeLoader", "source_of"]


def _loader() -> tuple[type, bool]:
    """The loader class, and whether its events come from libyaml."""
    try:
        from yaml._yaml import CParser
    except ImportError:  # PyYAML built without libyaml

        class PySafeLoader(yaml.SafeLoader):
            """``yaml.SafeLoader``, keeping the text read for :func:`source_of`."""

            def __init__(self, stream: str | bytes) -> None:
                super().__init__(stream)
                self.source_text = stream

        return PySafeLoader, False

    class FastSafeLoader(Composer, CParser, SafeConstructor, Resolver):
        """Events from libyaml (``CParser``), composed and constructed by PyYAML's Python
        code: ``Composer`` comes first, so its ``get_single_node`` and ``compose_node``
        (and a subclass's override of them) run, not the C parser's own composer."""

        def __init__(self, stream: str | bytes) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self.source_text = stream

        # libyaml's events spell a plain scalar's style "", PyYAML's None (which a
        # loader's checks may test): the same events as yaml.SafeLoader's
        def peek_event(self) -> Any:
            return _plain(CParser.peek_event(self))

        def get_event(self) -> Any:
            return _plain(CParser.get_event(self))

    return FastSafeLoader, True


def _plain(event: Any) -> Any:
    if type(event) is yaml.ScalarEvent and event.style == "":
        event.style = None
    return event


if TYPE_CHECKING:

    class FastSafeLoader(yaml.SafeLoader):
        """(What type checkers see: the same interface as ``yaml.SafeLoader``.)"""

        source_text: str | bytes

        def __init__(self, stream: str | bytes) -> None: ...

    WITH_LIBYAML: bool
else:
    FastSafeLoader, WITH_LIBYAML = _loader()


def source_of(loader: Any, event: Any) -> str:
    """The text of the document ``event`` was read from, as written ("" if unknown)."""
    text = getattr(loader, "source_text", None)
    start, end = getattr(event, "start_mark", None), getattr(event, "end_mark", None)
    if not isinstance(text, str) or start is None or end is None:
        return ""
    return text[start.index : end.index]
