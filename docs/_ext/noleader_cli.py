"""The ``noleader-cli`` directive: the command line reference, read from the parser.

``.. noleader-cli::`` renders the top-level ``noleader`` parser and
``.. noleader-cli:: run`` one subcommand's: its usage line, its description, and
every argument with its help, all taken from ``trio_noleader._cli.build_parser()``
at build time, so the reference cannot drift from what ``noleader --help`` says.
A subcommand the page does not render is a build warning (an error under ``-W``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from trio_noleader._cli import build_parser

logger = logging.getLogger(__name__)


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    # argparse wraps to the terminal's width: fix it, so every build renders alike.
    os.environ["COLUMNS"] = "88"
    return build_parser()


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        metavar = action.metavar or action.dest
        return str(metavar) + (" ..." if action.nargs in ("*", "+") else "")
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def _paragraphs(text: str) -> list[nodes.Node]:
    return [nodes.paragraph(text=" ".join(block.split()))
            for block in text.split("\n\n") if block.strip()]


class NoleaderCli(SphinxDirective):
    """Render one parser of the ``noleader`` command line."""

    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        parser, subparsers = _parsers()
        name = self.arguments[0] if self.arguments else None
        if name is not None:
            if name not in subparsers:
                raise self.error(f"noleader has no subcommand {name!r}")
            parser = subparsers[name]
        seen: set[str] = getattr(self.env, "noleader_cli_seen", set())
        seen.add(name or "")
        self.env.noleader_cli_seen = seen  # type: ignore[attr-defined]

        result: list[nodes.Node] = []
        result.append(nodes.literal_block(text=parser.format_usage().strip(),
                                          language="text"))
        if parser.description:
            result.extend(_paragraphs(parser.description))
        items = nodes.definition_list()
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(
                    action, argparse._SubParsersAction):
                continue
            help_text = formatter._expand_help(action) if action.help else ""
            term = nodes.term()
            term += nodes.literal(text=_invocation(action))
            definition = nodes.definition()
            definition += nodes.paragraph(text=help_text)
            items += nodes.definition_list_item("", term, definition)
        if len(items):
            result.append(items)
        if name is None:
            listing = nodes.definition_list()
            for sub_name in subparsers:
                term = nodes.term()
                term += nodes.literal(text=f"noleader {sub_name}")
                definition = nodes.definition()
                summary = next((choice.help for choice in _choices(parser)
                                if choice.dest == sub_name), "") or ""
                definition += nodes.paragraph(text=summary)
                listing += nodes.definition_list_item("", term, definition)
            result.append(listing)
            if parser.epilog:
                result.append(nodes.literal_block(text=parser.epilog.strip(),
                                                  language="text"))
        return result


def _choices(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action._choices_actions)
    return []


def _check_every_subcommand(app: Sphinx, env: Any) -> None:
    seen: set[str] = getattr(env, "noleader_cli_seen", set())
    _, subparsers = _parsers()
    for name in ["", *subparsers]:
        if name not in seen:
            logger.warning("the CLI reference renders no `.. noleader-cli:: %s`; "
                           "every noleader subcommand needs one", name or "(top level)")


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("noleader-cli", NoleaderCli)
    app.connect("env-check-consistency", _check_every_subcommand)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
