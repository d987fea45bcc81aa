"""`lorakit serve` keeps other web pages in the user's browser away from the model: DNS rebinding (a foreign
Host name), cross-site requests (a foreign Origin), and non-JSON POSTs (what an HTML form can send)."""

from __future__ import annotations

import json

import pytest

from evaluation.eval_runs import trained_tiny_run
from inference.serve_harness import ServerThread
from lorakit.config import ServeConfig
from lorakit.inference.generate import load_run
from lorakit.inference.serve import create_app

QUICK = {"messages": [{"role": "user", "content": "What is anemia?"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    return load_run(trained_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("serve")))


@pytest.fixture(scope="module")
def server(run):
    with ServerThread(create_app(run, ServeConfig())) as server:
        yield server


def chat(server: ServerThread, headers: dict) -> tuple[int, str]:
    """(status, body text) of a quick chat POST with exactly these headers (http.client adds Host unless given)."""
    status, _, text = server.request("POST", "/v1/chat/completions", QUICK, headers, content_type=None, text=True)
    return status, text


def error_message(text: str) -> str:
    assert "error" in json.loads(text), text
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error["message"]


def test_a_rebound_host_name_is_refused_on_loopback(server):
    json_body = {"Content-Type": "application/json"}
    assert chat(server, {**json_body, "Host": "rebound.evil.example"}) == (400, "Invalid host header")
    status, _, text = server.request("GET", "/v1/models", headers={"Host": f"rebound.evil.example:{server.port}"},
                                     content_type=None, text=True)
    assert (status, text) == (400, "Invalid host header")
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost"):
        assert chat(server, {**json_body, "Host": host})[0] == 200, host


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_post_that_is_not_declared_json_is_415(server, content_type):
    status, text = chat(server, {} if content_type is None else {"Content-Type": content_type})
    got = "none" if content_type is None else repr(content_type)
    assert (status, error_message(text)) == (415, "The request body must be JSON, sent with 'Content-Type: "
                                                  f"application/json' (got {got}).")
    assert json.loads(text)["error"]["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_accepted(server):
    assert chat(server, {"Content-Type": "application/json; charset=utf-8"})[0] == 200


def test_a_foreign_origin_is_403_and_the_servers_own_origin_passes(server):
    own = f"http://127.0.0.1:{server.port}"
    for origin in ("http://evil.example", f"http://localhost:{server.port}", "null",
                   f"https://127.0.0.1:{server.port}"):
        status, text = chat(server, {"Content-Type": "application/json", "Origin": origin})
        assert (status, error_message(text)) == (403, f"Cross-origin request refused: Origin '{origin}' is not "
                                                      f"this server's origin '{own}'. Web pages on other sites may "
                                                      "not use this server.")
        assert json.loads(text)["error"]["code"] == "cross_origin_request"
    status, _, text = server.request("GET", "/v1/models", headers={"Origin": "http://evil.example"},
                                     content_type=None, text=True)
    assert status == 403
    status, text = chat(server, {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"})
    assert (status, error_message(text)) == (403, "Cross-origin request refused: the browser marked it as sent by "
                                                  "another site (Sec-Fetch-Site: cross-site). Web pages on other "
                                                  "sites may not use this server.")
    assert chat(server, {"Content-Type": "application/json", "Origin": own, "Sec-Fetch-Site": "same-origin"})[0] == 200
    assert server.wait_idle()["finished"].get("error") is None


def test_on_another_address_any_host_name_is_served_but_origins_are_still_checked(run):
    """`--host 0.0.0.0`: clients use this machine's names and addresses, so the Host is not checked there."""
    with ServerThread(create_app(run, ServeConfig(host="0.0.0.0"))) as server:
        assert chat(server, {"Content-Type": "application/json", "Host": "gpu-box.lan:8000"})[0] == 200
        assert chat(server, {"Content-Type": "application/json", "Origin": "http://evil.example"})[0] == 403
