"""The reference tables in the docs match the code: the API page's SessionConfig and
RestartPolicy tables and the parameter descriptions of connect, serve and the Session
methods (docstrings the page renders), and the command-line page's options, messages
and exit codes.  A change to either side without the other fails here."""

from __future__ import annotations

import argparse
import inspect
import re

import attrs
import msgspec
import pytest

import trio_session as ts
from trio_session import demo
from trio_session.cli import build_parser, errors

from .cli_helpers import ROOT

API = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
CLI = (ROOT / "docs" / "howto" / "cli.md").read_text(encoding="utf-8")


def table_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([cell.strip() for cell in cells])
    return rows


def value(cell: str) -> float | bool | None:
    text = cell.strip("`").removesuffix(" s").strip("`")
    constants: dict[str, bool | None] = {"True": True, "False": False, "None": None}
    if text in constants:
        return constants[text]
    match = re.fullmatch(r"(\d+) (KiB|MiB)", text)
    if match:
        return int(match[1]) * {"KiB": 2**10, "MiB": 2**20}[match[2]]
    match = re.fullmatch(r"2\*\*(\d+)", text)
    if match:
        return int(2 ** int(match[1]))
    return float(text)


@pytest.mark.parametrize(
    ("cls", "header"),
    [(ts.SessionConfig, "| field | default |"), (ts.RestartPolicy, "| field | default |")],
)
def test_field_tables_list_every_field_with_its_default(cls: type, header: str) -> None:
    section = API[API.index(f"`{cls.__name__}`") :]
    rows = table_rows(section, header)
    documented = {row[0].strip("`"): value(row[1]) for row in rows}
    instance = cls()
    fields = {f.name: getattr(instance, f.name) for f in attrs.fields(cls)}
    assert list(documented) == list(fields)
    assert documented == fields


@pytest.mark.parametrize("function", [ts.connect, ts.serve])
def test_connect_and_serve_describe_every_parameter_on_the_api_page(function: object) -> None:
    # The API page renders their docstrings (autodoc): every parameter must be
    # described there, in order, under "Args:".
    name = function.__name__  # type: ignore[attr-defined]
    assert f".. autofunction:: trio_session.{name}\n" in API
    doc = inspect.getdoc(function) or ""
    args = doc.split("Args:\n", 1)[1].split("\n\n", 1)[0]
    described = re.findall(r"^    (\w+):", args, flags=re.MULTILINE)
    actual = list(inspect.signature(function).parameters)  # type: ignore[arg-type]
    assert described == actual


def test_session_methods_describe_their_parameters() -> None:
    for name in ("send", "send_many", "send_latest", "receive_batch", "reject", "aclose"):
        method = getattr(ts.Session, name)
        doc = inspect.getdoc(method) or ""
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        for param in params:
            assert re.search(rf"^    {param}:", doc, flags=re.MULTILINE), (name, param)


def _options() -> dict[str, set[str]]:
    """command -> its option strings (long ones)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: dict[str, set[str]] = {}
    for name, command in sub.choices.items():
        found[name] = _long_options(command) - {"--help"}
    return found


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    """A parser's long options, and those of its actions' parsers (``store inspect``)."""
    options = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                options |= _long_options(nested)
    return options


def test_every_option_is_on_the_cli_page_and_every_documented_option_exists() -> None:
    options = _options()
    every = set().union(*options.values())
    documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", CLI))
    assert documented - {"--help"} <= every, documented - every
    for command in ("demo", "keygen", "serve", "connect", "store"):
        assert options[command] <= documented, (command, options[command] - documented)


def test_the_messages_table_matches_the_demo_structs() -> None:
    rows = table_rows(CLI, "| message | direction | fields |")
    documented = {row[0].strip("`"): re.findall(r"(\w+):", row[2]) for row in rows}
    expected = {
        s.__name__: [f.name for f in msgspec.structs.fields(s)]
        for s in (demo.Subscribe, demo.NewOrder, demo.Quote, demo.ExecutionReport)
    }
    assert documented == expected


def test_the_exit_code_table_matches_the_constants() -> None:
    rows = table_rows(CLI, "| exit code | meaning |")
    documented = {int(row[0]) for row in rows}
    constants = {
        value
        for name, value in vars(errors).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert documented == constants
