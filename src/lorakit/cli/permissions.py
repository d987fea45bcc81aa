"""--trust-remote-code and --allow-pickle for the commands that load a trained run's base model (chat, eval, serve,
export): the person running the command allows these, never the run folder's saved config, which may come from
someone else."""

from __future__ import annotations

import typer

__all__ = ["trust_remote_code_option", "allow_pickle_option", "permissions"]


def trust_remote_code_option():
    return typer.Option(False, "--trust-remote-code",
                        help="Let the run's base model run its own Python code, when its saved config asks for it "
                             "(model.trust_remote_code). Only for code you trust.")


def allow_pickle_option():
    return typer.Option(False, "--allow-pickle",
                        help="Let the run's base model load pickle (.bin) weights, when its saved config asks for it "
                             "(model.allow_pickle). Only for files you trust.")


def permissions(trust_remote_code: bool, allow_pickle: bool):
    from lorakit.run.source import Permissions

    return Permissions(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
