"""Reading a submitted YAML document costs the SPM a bounded, small amount of CPU.
Found by a review: policy documents (which anyone who reaches the SPM may submit)
were read with PyYAML's pure-Python scanner and parser, some 25 000 values a
CPU-second, so a document at the cap of 100 000 values took 4-5 CPU-s to refuse.
The events now come from libyaml's C parser (five times cheaper), composed by the
same Python code, so every strict check still runs and refuses alike; the cap,
aliases and depth are refused while composing, before any value is built. No timed
assertion: what is checked is which parser read the document and where it stopped."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from yaml.composer import ComposerError

from secfl._internal import yamlload
from secfl.errors import FlError, PolicyError
from secfl.fl._untrusted import parse_yaml
from secfl.policy import load_policy
from secfl.policy._document import MAX_NODES, _NewVersionLoader, _StrictLoader
from tests.policy import EXAMPLE

pytestmark = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")


def test_submitted_yaml_is_parsed_by_libyaml() -> None:
    from yaml._yaml import CParser

    assert yamlload.WITH_LIBYAML
    for loader in (_StrictLoader, _NewVersionLoader, yamlload.FastSafeLoader):
        assert issubclass(loader, CParser), loader
        # ...but composed by PyYAML's Python composer, where the strict checks are
        assert loader.compose_node is not CParser.__dict__.get("compose_node")


def test_a_document_over_the_cap_is_refused_by_the_c_parsers_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[Any] = []
    get_event = _StrictLoader.get_event

    def counted(self: Any) -> Any:
        event = get_event(self)
        events.append(event)
        return event

    monkeypatch.setattr(_StrictLoader, "get_event", counted)
    doc = "federation:\n" + "".join(f"- {i % 10}\n" for i in range(MAX_NODES + 10))
    with pytest.raises(PolicyError) as refused:
        load_policy(doc)
    assert str(refused.value) == (
        f"policy: YAML line {MAX_NODES - 1}, column 3: more than {MAX_NODES} values in one document"
    )
    # stopped at the cap (not at the end of the document), on libyaml's events
    assert MAX_NODES <= len(events) <= MAX_NODES + 5
    assert type(events[-1].start_mark).__module__ == "yaml._yaml"


def test_an_alias_bomb_is_refused_in_one_line() -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    with pytest.raises(PolicyError) as refused:
        load_policy(laughs)
    assert str(refused.value) == "policy: YAML line 2, column 8: YAML aliases are not allowed"
    with pytest.raises(FlError) as refused_fl:
        parse_yaml(laughs, "settings")
    assert str(refused_fl.value) == "settings holds more than 100000 values"


def _events(text: str, loader: Any) -> list[tuple[str, dict[str, Any]]]:
    """The events of ``text`` as ``loader`` reads them, without their positions."""
    return [
        (type(e).__name__, {k: v for k, v in vars(e).items() if not k.endswith("_mark")})
        for e in yaml.parse(text, Loader=loader)
    ]


@pytest.mark.parametrize(
    "text",
    [
        EXAMPLE.read_text(),
        "a: x\nb: \"y\"\nc: 'z'\nd: [1, 2.5, .5e3, 1.0e-3]\ne: {f: true}\n",
        "a: |\n  one\n  two\nb: >-\n  folded\n  text\nc: null\nd: ~\ne:\n",
        "- !!str 1\n- &anchor y\n- *anchor\n",
    ],
)
def test_the_c_parser_gives_the_python_ones_events(text: str) -> None:
    assert _events(text, yamlload.FastSafeLoader) == _events(text, yaml.SafeLoader)
    assert yaml.load(text, Loader=yamlload.FastSafeLoader) == yaml.safe_load(text)  # noqa: S506


def test_the_source_of_an_event_is_its_text_as_written() -> None:
    text = 'a: "🙂é"\r\nb: ["x\\x41"]\n'
    loader = yamlload.FastSafeLoader(text)
    shown = []
    while loader.check_event():
        event = loader.get_event()
        if isinstance(event, yaml.ScalarEvent):
            shown.append(yamlload.source_of(loader, event))
    assert shown == ["a", '"🙂é"', "b", '"x\\x41"']
    with pytest.raises(TypeError):
        _StrictLoader(text.encode())
    with pytest.raises(ComposerError):
        yaml.load(text, Loader=_StrictLoader)  # noqa: S506
