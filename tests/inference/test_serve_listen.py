"""`lorakit serve` checks that it can listen before it loads the model or prints its URL: a taken --port or an
unknown --host is one error with a hint and exit 2, not a "Serving at" line followed by uvicorn's [Errno 98]."""

from __future__ import annotations

import pytest

from conftest import free_port, unresolvable
from lorakit.cli.app import run_cli


@pytest.fixture
def started(monkeypatch) -> list:
    """Records load_run and uvicorn.run calls (neither may happen when the address cannot be used)."""
    calls = []
    monkeypatch.setattr("lorakit.inference.serve.load_run", lambda *a, **k: calls.append("load_run") or object())
    monkeypatch.setattr("lorakit.inference.serve.create_app", lambda run, options: object())
    monkeypatch.setattr("lorakit.inference.serve.served_model_id", lambda run: "demo")
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: calls.append("uvicorn.run"))
    return calls


def test_a_taken_port_is_exit_2_with_a_hint_before_loading(started, taken_port, tmp_path, capsys, caplog):
    assert run_cli(["serve", str(tmp_path), "--port", str(taken_port)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: port {taken_port} on 127.0.0.1 is in use",
                                "hint: pass another --port, or stop the program that listens there"]
    assert started == []
    assert "Serving" not in out + err + caplog.text


def test_an_unknown_host_is_exit_2_with_a_hint_before_loading(started, tmp_path, capsys, caplog):
    reason = unresolvable("nosuchhost.invalid")
    assert run_cli(["serve", str(tmp_path), "--host", "nosuchhost.invalid", "--port", "8768"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"error: cannot listen on nosuchhost.invalid: {reason}",
        "hint: pass an address of this machine to --host: 127.0.0.1 (this machine only) or 0.0.0.0 (every network)"]
    assert started == []
    assert "Serving" not in out + err + caplog.text


def test_an_address_of_another_machine_is_exit_2(started, tmp_path, capsys):
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of this machine.
    assert run_cli(["serve", str(tmp_path), "--host", "192.0.2.1", "--port", "8768"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: cannot listen on 192.0.2.1: Cannot assign requested address"
    assert started == []


def test_a_free_port_still_loads_and_serves(started, tmp_path):
    assert run_cli(["serve", str(tmp_path), "--port", str(free_port())]) == 0
    assert started == ["load_run", "uvicorn.run"]
