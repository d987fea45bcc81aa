"""`lorakit studio` command line (uvicorn mocked): it checks that it can listen before printing its URL, and it
warns on any address but this machine's own, since the studio has no login."""

from __future__ import annotations

import pytest

from conftest import free_port, unresolvable
from lorakit.cli.app import run_cli

WARNING = ("warning: the studio listens on {host}, not only on this machine, and it has no login: anyone who can "
           "reach this address can read and upload the data files, start training and other jobs, and export and "
           "push models to the Hugging Face Hub with this machine's login. Use the default --host 127.0.0.1 unless "
           "this network is trusted.")


@pytest.fixture
def started(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **kwargs: calls.append((host, port)))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_a_host_beyond_this_machine_warns_that_anyone_can_use_the_studio(started, tmp_path, capsys, monkeypatch,
                                                                        host):
    if host == "192.0.2.1":  # TEST-NET-1 is no address here: let the bind check pass, to see the warning
        monkeypatch.setattr("lorakit.runtime.local_http.check_can_listen", lambda host, port: None)
    port = free_port("0.0.0.0")
    assert run_cli(["studio", "--host", host, "--port", str(port), "--workdir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [WARNING.format(host=host)]
    assert out.startswith(f"lorakit studio: http://{host}:{port}/")
    assert started == [(host, port)]  # warned, not refused


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_this_machine_only_gives_no_warning(started, tmp_path, capsys, host):
    port = free_port()
    assert run_cli(["studio", "--host", host, "--port", str(port), "--workdir", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""
    assert started == [(host, port)]


def test_a_taken_port_is_exit_2_with_a_hint_before_the_url(started, taken_port, tmp_path, capsys):
    assert run_cli(["studio", "--port", str(taken_port), "--workdir", str(tmp_path / "work")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"error: port {taken_port} on 127.0.0.1 is in use",
                                "hint: pass another --port, or stop the program that listens there"]
    assert started == [] and not (tmp_path / "work").exists()


def test_an_unknown_host_is_exit_2_with_a_hint_before_the_url(started, tmp_path, capsys):
    reason = unresolvable("nosuchhost.invalid")
    assert run_cli(["studio", "--host", "nosuchhost.invalid", "--workdir", str(tmp_path / "work")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"error: cannot listen on nosuchhost.invalid: {reason}",
        "hint: pass an address of this machine to --host: 127.0.0.1 (this machine only) or 0.0.0.0 (every network)"]
    assert started == [] and not (tmp_path / "work").exists()
