"""Issue 4, point 6: Hub faults against a local server playing the Hub (HF_ENDPOINT on 127.0.0.1).

Each fault runs the real `lorakit train` in a process of its own (huggingface_hub reads HF_* variables at import;
the processes are forked from a zygote that has not imported it: tests/forked_lorakit.py) and must print exactly
one error with one hint, no traceback, and exit 2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import free_port, write_qa_jsonl
from fake_hub import FakeHub
from forked_lorakit import Zygote

# Modules that read HF_* or proxy settings when imported: each forked child imports them itself.
HUB_READERS = ("huggingface_hub", "transformers", "peft", "requests", "httpx")
GOOD_TOKEN = "hf_GoodTokenForTheFakeHub0123456789"
OTHER_TOKEN = "hf_ValidButNotGrantedAccess987654321"


def _run_lorakit(zygote: Zygote, directory: Path, endpoint: str, repo_id: str, token: str | None,
                 offline: bool = False, command: str = "train", extra_env: dict | None = None):
    directory.mkdir()
    data = write_qa_jsonl(directory / "qa.jsonl")
    config = directory / "config.yaml"
    repo_id, _, revision = repo_id.partition("@")  # "owner/name@rev" pins model.revision
    config.write_text(yaml.safe_dump({
        "output_dir": str(directory / "run"),
        "model": {"name": repo_id, "max_length": 128, **({"revision": revision} if revision else {})},
        "training": {"batch_size": 2, "max_steps": 1}, "data": {"train_file": str(data)},
    }))
    env = _base_env()
    env.update(extra_env or {})
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(directory / "hf-home"), HF_HUB_ETAG_TIMEOUT="1",
               HF_HUB_DOWNLOAD_TIMEOUT="1", LORAKIT_CACHE_DIR=str(directory / "cache"), COLUMNS="200")
    if token is not None:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    started = time.monotonic()
    extra = ["--gpu-memory", "8GB"] if command == "plan" else []
    process = zygote.start([command, str(config), *extra], directory, env=env)
    process.wait(timeout=180)
    return subprocess.CompletedProcess(command, process.returncode, *process.output()), time.monotonic() - started


def _base_env() -> dict:
    """This environment without the Hub's variables and proxies (each scenario sets its own)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGING_FACE")) and not k.lower().endswith("_proxy")}


# name -> (repo id, token, offline, which server[, command]); all run at once, each test checks its own outcome.
SCENARIOS = {
    "no-token": ("lorakit-tests/private-llama", None, False, "hub"),
    "bad-token": ("lorakit-tests/tiny-llama", "hf_NotAValidToken", False, "hub"),
    "gated-403": ("lorakit-tests/gated-llama", OTHER_TOKEN, False, "hub"),
    "gated-no-token": ("lorakit-tests/gated-llama", None, False, "hub"),
    "not-found": ("lorakit-tests/tiny-lama", GOOD_TOKEN, False, "hub"),
    "refused": ("lorakit-tests/tiny-llama", None, False, "closed"),
    "timeout": ("lorakit-tests/tiny-llama", None, False, "silent"),
    "offline": ("lorakit-tests/tiny-llama", None, True, "hub"),
    "plan-timeout": ("lorakit-tests/tiny-llama", None, False, "silent", "plan"),
    "plan-gated": ("lorakit-tests/gated-llama", OTHER_TOKEN, False, "hub", "plan"),
    # Issue 22: the Hub's own trouble, named with its status and Retry-After (was "Could not connect").
    "rate-limited": ("lorakit-tests/busy-llama", None, False, "hub"),
    "server-error": ("lorakit-tests/broken-llama", None, False, "hub"),
    "unavailable": ("lorakit-tests/down-llama", None, False, "hub"),
    "cut-mid-file": ("lorakit-tests/cut-llama", None, False, "hub"),
    "gone-revision": ("lorakit-tests/tiny-llama@v0-deleted", None, False, "hub"),
    # Issue 22 row 10: a proxy that cannot be reached (was "the Hub refused"), a TLS certificate that does not
    # verify (was "Could not connect (ConnectError)").
    "proxy": ("lorakit-tests/tiny-llama", None, False, "hub"),
    "tls": ("lorakit-tests/tiny-llama", None, False, "tls"),
}
CLOSED_PROXY_PORT = free_port()
# user:password in the proxy URL must not be printed
SCENARIO_ENV = {"proxy": {"HTTP_PROXY": f"http://me:Pr0xyPassw0rd@127.0.0.1:{CLOSED_PROXY_PORT}",
                          "HTTPS_PROXY": f"http://me:Pr0xyPassw0rd@127.0.0.1:{CLOSED_PROXY_PORT}"}}


@contextlib.contextmanager
def _self_signed_tls_server(directory: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 whose certificate is self-signed (as a proxy that inspects HTTPS shows)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    class Quiet(ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:  # the client hangs up mid-handshake: expected
            pass

    server = Quiet(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def outcomes(tiny_llama_dir, tmp_path_factory):
    """Run every scenario's `lorakit train` concurrently (each is mostly interpreter start-up). Each is a process
    forked from a zygote that imported lorakit's CLI (and torch) but not huggingface_hub (the zygote checks), so
    the child imports the Hub client under its own HF_* variables, as `python -m lorakit` would
    (tests/forked_lorakit.py)."""
    root = tmp_path_factory.mktemp("hub-faults")
    with (FakeHub(valid_tokens={GOOD_TOKEN, OTHER_TOKEN}) as hub, FakeHub(hang=True) as silent,
          _self_signed_tls_server(root) as tls,
          Zygote(_base_env(), preload=("lorakit.cli.app",), not_imported=HUB_READERS) as zygote):
        hub.add("lorakit-tests/tiny-llama", tiny_llama_dir)
        hub.add("lorakit-tests/gated-llama", tiny_llama_dir, gated=True, granted_tokens={GOOD_TOKEN})
        hub.add("lorakit-tests/busy-llama", tiny_llama_dir, fault=429, retry_after="30")
        hub.add("lorakit-tests/broken-llama", tiny_llama_dir, fault=500)
        hub.add("lorakit-tests/down-llama", tiny_llama_dir, fault=503, retry_after="120")
        hub.add("lorakit-tests/cut-llama", tiny_llama_dir, fault="cut")
        endpoints = {"hub": hub.url, "silent": silent.url, "closed": f"http://127.0.0.1:{free_port()}", "tls": tls}
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(_run_lorakit, zygote, root / name, endpoints[server], repo, token, offline,
                                         *(command or ["train"]), extra_env=SCENARIO_ENV.get(name))
                       for name, (repo, token, offline, server, *command) in SCENARIOS.items()}
            results = {name: future.result() for name, future in futures.items()}
        yield results, hub


def _assert_one_message(result) -> tuple[str, str]:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), result.stderr
    return lines[0], lines[1]


def test_hub_faults_401_without_a_token_says_to_log_in(outcomes):
    error, hint = _assert_one_message(outcomes[0]["no-token"][0])
    assert "refused to serve lorakit-tests/private-llama without a login (401 Unauthorized)" in error
    assert "`hf auth login`" in hint and "check the spelling" in hint


def test_hub_faults_401_with_a_bad_token_says_the_token_was_rejected(outcomes):
    result = outcomes[0]["bad-token"][0]
    error, hint = _assert_one_message(result)
    assert "rejected your token" in error and "401 Unauthorized" in error
    assert "`hf auth login`" in hint and "HF_TOKEN" in hint
    assert "hf_NotAValidToken" not in result.stderr + result.stdout


def test_hub_faults_403_gated_names_the_page_and_says_request_access_then_login(outcomes):
    (result, _), hub = outcomes[0]["gated-403"], outcomes[1]
    error, hint = _assert_one_message(result)
    assert "lorakit-tests/gated-llama is a gated model and your account has not been granted access (403" in error
    assert f"Request access on the model page {hub.url}/lorakit-tests/gated-llama, then log in with `hf auth login`" in hint


def test_hub_faults_gated_without_a_token_also_says_request_access(outcomes):
    error, hint = _assert_one_message(outcomes[0]["gated-no-token"][0])
    assert "is a gated model and you are not logged in" in error
    assert "Request access on the model page" in hint and "`hf auth login`" in hint


def test_hub_faults_404_says_not_found_and_to_check_the_spelling(outcomes):
    error, hint = _assert_one_message(outcomes[0]["not-found"][0])
    assert "Model 'lorakit-tests/tiny-lama' was not found on the Hub (404 Not Found)" in error
    assert "Check the spelling of model.name" in hint


def test_hub_faults_connection_refused_says_so_and_suggests_offline_mode(outcomes):
    error, hint = _assert_one_message(outcomes[0]["refused"][0])
    assert "The connection to the Hugging Face Hub was refused" in error
    assert "HF_HUB_OFFLINE=1" in hint


def test_hub_faults_timeout_says_so_within_seconds_and_suggests_offline_mode(outcomes):
    result, seconds = outcomes[0]["timeout"]
    error, hint = _assert_one_message(result)
    assert "did not answer within 1 s (timeout)" in error
    assert "HF_HUB_OFFLINE=1" in hint
    assert seconds < 90  # without lorakit's bounded timeout huggingface_hub waits forever


def test_hub_faults_offline_with_a_cache_miss(outcomes):
    error, hint = _assert_one_message(outcomes[0]["offline"][0])
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it" in error
    assert "Unset HF_HUB_OFFLINE" in hint


def test_hub_faults_every_request_went_to_the_configured_endpoint_only(outcomes):
    hub = outcomes[1]
    paths = [path for _, path, _ in hub.requests]
    assert any("/gated-llama/resolve/" in p for p in paths)  # the gated refusal came from a file request
    assert all(auth in (None, f"Bearer {GOOD_TOKEN}", f"Bearer {OTHER_TOKEN}", "Bearer hf_NotAValidToken")
               for _, _, auth in hub.requests)


def test_hub_faults_plan_reads_config_json_with_the_same_timeout_and_messages(outcomes):
    (timeout, seconds), (gated, _) = outcomes[0]["plan-timeout"], outcomes[0]["plan-gated"]
    error, hint = _assert_one_message(timeout)
    assert "did not answer within 1 s (timeout)" in error and seconds < 90
    error, hint = _assert_one_message(gated)
    assert "is a gated model and your account has not been granted access (403" in error


def test_hub_faults_429_names_the_rate_limit_and_its_retry_after(outcomes):
    error, hint = _assert_one_message(outcomes[0]["rate-limited"][0])
    assert error == ("error: The Hub is rate-limiting requests (HTTP 429 Too Many Requests) while downloading "
                     "lorakit-tests/busy-llama; it asks to retry after 30 s.")
    assert hint.startswith("hint: Wait 30 s and run the command again")


@pytest.mark.parametrize(("scenario", "expected"), [
    ("server-error", "HTTP 500 Internal Server Error while downloading lorakit-tests/broken-llama."),
    ("unavailable", "HTTP 503 Service Unavailable while downloading lorakit-tests/down-llama; it asks to retry "
                    "after 120 s."),
])
def test_hub_faults_5xx_names_the_status_not_a_connection_failure(outcomes, scenario, expected):
    error, hint = _assert_one_message(outcomes[0][scenario][0])
    assert error == f"error: The Hub answered {expected}"
    assert hint.startswith("hint: The Hub has a problem on its side: try again later")


def test_hub_faults_a_download_cut_mid_file_is_one_message(outcomes):
    error, hint = _assert_one_message(outcomes[0]["cut-mid-file"][0])
    assert error.startswith("error: The connection to http://127.0.0.1:")
    assert "broke while downloading lorakit-tests/cut-llama (RemoteProtocolError: " in error
    assert hint.startswith("hint: Run the command again: files that finished stay in the Hugging Face cache")


def test_hub_faults_a_revision_that_no_longer_exists_is_named(outcomes):
    error, hint = _assert_one_message(outcomes[0]["gone-revision"][0])
    assert error == "error: lorakit-tests/tiny-llama has no revision 'v0-deleted'."
    assert hint.startswith("hint: Check model.revision against http://127.0.0.1:")


def test_hub_faults_an_unreachable_proxy_is_named_without_its_password(outcomes):
    result, hub = outcomes[0]["proxy"][0], outcomes[1]
    error, hint = _assert_one_message(result)
    assert error.startswith(f"error: Could not reach the proxy http://127.0.0.1:{CLOSED_PROXY_PORT} (ConnectError: ")
    assert error.endswith(f") on the way to {hub.url} to download lorakit-tests/tiny-llama.")
    assert hint.startswith("hint: Check HTTPS_PROXY / HTTP_PROXY (and NO_PROXY)")
    assert "Pr0xyPassw0rd" not in result.stderr + result.stdout


def test_hub_faults_a_self_signed_certificate_is_named_with_what_to_do(outcomes):
    error, hint = _assert_one_message(outcomes[0]["tls"][0])
    assert error.startswith("error: The TLS certificate of https://127.0.0.1:")
    assert error.endswith("could not be verified (self-signed certificate) while downloading lorakit-tests/tiny-llama.")
    assert hint.startswith("hint: A proxy or firewall that inspects HTTPS shows its own certificate: point "
                           "SSL_CERT_FILE at its CA certificate")
