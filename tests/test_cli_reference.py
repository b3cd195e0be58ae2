"""docs/cli.md is generated from the Typer app; it must match what the app says now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_cli_reference.py"
PAGE = ROOT / "docs" / "cli.md"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_cli_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date():
    generated = load_generator().render_reference()
    committed = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
    assert generated == committed, (
        "docs/cli.md is out of date with the command line: run `python scripts/make_cli_reference.py` "
        "to update it (`--check` shows the difference)"
    )


def test_cli_reference_is_deterministic(monkeypatch):
    """No dependence on the terminal: the same page at any COLUMNS."""
    generator = load_generator()
    monkeypatch.setenv("COLUMNS", "40")
    narrow = generator.render_reference()
    monkeypatch.setenv("COLUMNS", "300")
    assert generator.render_reference() == narrow


def test_cli_reference_lists_every_command():
    import typer.main

    generator = load_generator()
    root = typer.main.get_command(generator.load_app())
    context = root.context_class(root, info_name=generator.PROGRAM)
    page = generator.render_reference()
    for name in root.list_commands(context):
        assert f"## {generator.PROGRAM} {name}\n" in page
