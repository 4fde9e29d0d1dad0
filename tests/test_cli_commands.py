"""The command line: every command the parser offers has one function in the dispatch table."""

from __future__ import annotations

import argparse

from semrec.cli import COMMANDS, _parser


def test_every_command_has_its_function_in_the_dispatch_table() -> None:
    (commands,) = [
        action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)
    ]
    # convert runs before the model stack is imported; every other command is dispatched
    assert set(commands.choices) == set(COMMANDS) | {"convert"}
    assert len(set(COMMANDS.values())) == len(COMMANDS)
