"""`lorakit push` against the loopback fake Hub: private upload with the card, one message (and exit code)
each for 401, 403 and a network failure mid-upload, the privacy refusal, the token in nothing written, a private
push into an existing public repo refused, and no data file name, source URL or local path in any uploaded file."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from export.export_runs import leaks, run_on_patient_named_data, secrets_of, tiny_run
from fake_hub import FakeHub
from lorakit.cli.app import run_cli

CANARY = "hf_LorakitPushCanary5Rk82TqW3nZ7xV1yB6"
REPO = "lorakit-tests/tiny-medical"


@pytest.fixture
def run_dir(tiny_llama_dir, tmp_path_factory, tmp_path):
    return tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("train-llama"), tmp_path / "run")


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Point huggingface_hub at a fake Hub; the token comes from HF_TOKEN, as a user would set it."""
    import huggingface_hub.constants

    def start(hub: FakeHub, token: str | None = CANARY) -> FakeHub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        if token is None:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        else:
            monkeypatch.setenv("HF_TOKEN", token)
        return hub

    return start


def _files_containing(root, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_push_uploads_privately_with_the_card_and_never_the_token_or_data(run_dir, hub_env, tmp_path, capsys, caplog):
    with hub_env(FakeHub(valid_tokens={CANARY})) as hub:
        code = run_cli(["push", str(run_dir), "--repo-id", REPO])
        assert code == 0, hub.requests
    out = capsys.readouterr()
    assert f"uploaded adapter (private) to {hub.url}/{REPO}" in out.out
    uploaded = hub.created[REPO]
    assert uploaded.private is True and uploaded.commits == ["lorakit: adapter of run"]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "manifest.json"} <= set(uploaded.files)
    card = uploaded.files["README.md"].decode()
    manifest = json.loads((run_dir / "final" / "manifest.json").read_text())
    assert manifest["data"]["sha256"] in card and "LoRA: r=4, alpha=8" in card and "## Limits" in card
    # Never the data: no training answer appears in anything uploaded.
    assert not [name for name, data in uploaded.files.items() if b"Persistently high blood pressure" in data]
    # Never the token: not in the card, the uploaded files, the run dir, the console or the logs.
    assert not [name for name, data in uploaded.files.items() if CANARY.encode() in data]
    assert _files_containing(tmp_path, CANARY.encode()) == []
    assert CANARY not in out.out + out.err + caplog.text
    assert all(auth == f"Bearer {CANARY}" for method, _, auth in hub.requests if method == "POST")


def test_push_public_merged(run_dir, hub_env):
    with hub_env(FakeHub(valid_tokens={CANARY})) as hub:
        assert run_cli(["push", str(run_dir), "--repo-id", REPO, "--public", "--what", "merged"]) == 0
    assert hub.created[REPO].private is False
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= set(hub.created[REPO].files)


@pytest.mark.parametrize("fault, exit_code, message", [
    ("no token", 2, f"Uploading to {REPO} needs a Hugging Face login (401 Unauthorized)."),
    ("bad token", 2, f"The Hub rejected your token while uploading to {REPO} (401 Unauthorized)."),
    ("403", 2, f"Your token may not write to {REPO} (403 Forbidden): it is read-only, or the namespace "
               "'lorakit-tests' is not yours or your organization's."),
    ("network", 2, "failed while uploading to lorakit-tests/tiny-medical"),
])
def test_push_faults_give_one_message_each(fault, exit_code, message, run_dir, hub_env, capsys, monkeypatch):
    # huggingface_hub retries a dropped commit with back-off sleeps (1 + 2 + 4 + 8 + 8 s): record them instead of
    # sleeping; the requests, the retries and the message after the last one are the same.
    import huggingface_hub.utils._http as hub_http

    waits: list[float] = []
    monkeypatch.setattr(hub_http, "time", SimpleNamespace(**{**vars(time), "sleep": waits.append}))
    hub = FakeHub(valid_tokens={CANARY}, forbidden_namespaces={"lorakit-tests"} if fault == "403" else None,
                  drop_commit=fault == "network")
    token = {"no token": None, "bad token": "hf_WrongToken000000000000000000000"}.get(fault, CANARY)
    with hub_env(hub, token):
        assert run_cli(["push", str(run_dir), "--repo-id", REPO]) == exit_code
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") or message in err
    assert err.count("error:") == 1 and "Traceback" not in err and CANARY not in err
    assert bool(waits) == (fault == "network")  # only the network failure is retried


def _flag_identifiers(run_dir):
    path = run_dir / "final" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["settings"]["allow_phi"] = True
    manifest["data"]["phi_findings_allowed"] = 3
    path.write_text(json.dumps(manifest))


def test_push_refuses_data_with_identifiers_unless_approved(run_dir, hub_env, capsys):
    _flag_identifiers(run_dir)
    with hub_env(FakeHub(valid_tokens={CANARY})) as hub:
        assert run_cli(["push", str(run_dir), "--repo-id", REPO]) == 2
        err = capsys.readouterr().err
        assert "the privacy scan found 3 possible patient identifier(s)" in err and "--i-have-approval" in err
        assert hub.created == {} and hub.requests == []
        assert run_cli(["push", str(run_dir), "--repo-id", REPO, "--i-have-approval"]) == 0
    card = hub.created[REPO].files["README.md"].decode()
    assert "Publication approval: the uploader stated (`lorakit push --i-have-approval`)" in card
    assert "flagged 3 possible identifier(s)" in card


PUBLIC_REFUSAL = (f"error: {REPO} already exists on the Hub and is public, and this push is private (the default); "
                  "nothing was uploaded.")


def test_private_push_into_an_existing_public_repo_is_refused_before_uploading(run_dir, hub_env, capsys):
    with hub_env(FakeHub(valid_tokens={CANARY})) as hub:
        hub.add_created(REPO, private=False)
        assert run_cli(["push", str(run_dir), "--repo-id", REPO]) == 2
        out = capsys.readouterr()
        assert PUBLIC_REFUSAL in " ".join(out.err.split())
        assert (f"hint: Choose another --repo-id, make {hub.url}/{REPO} private in its settings on the Hub, or pass "
                "--public to publish into the public repo.") in " ".join(out.err.split())
        assert "uploaded" not in out.out and out.err.count("error:") == 1
        assert hub.created[REPO].files == {} and hub.created[REPO].commits == []
        assert not [path for _, path, _ in hub.requests if "/preupload/" in path or "/commit/" in path]
        # Saying so publishes into it, and the line says public.
        assert run_cli(["push", str(run_dir), "--repo-id", REPO, "--public"]) == 0
    assert f"uploaded adapter (public) to {hub.url}/{REPO}" in capsys.readouterr().out
    assert hub.created[REPO].private is False and "adapter_model.safetensors" in hub.created[REPO].files


@pytest.mark.parametrize("flags", [[], ["--public"]])
def test_push_into_an_existing_private_repo_says_private(flags, run_dir, hub_env, capsys):
    with hub_env(FakeHub(valid_tokens={CANARY})) as hub:
        hub.add_created(REPO, private=True)
        assert run_cli(["push", str(run_dir), "--repo-id", REPO, *flags]) == 0
    out = capsys.readouterr()
    assert f"uploaded adapter (private) to {hub.url}/{REPO}" in out.out  # what the Hub says it is
    assert hub.created[REPO].commits == ["lorakit: adapter of run"]
    assert ("already exists and is private; --public does not change that" in " ".join(out.err.split())) == bool(flags)


@pytest.fixture(scope="module")
def patient_run(tiny_llama_dir, tmp_path_factory):
    return run_on_patient_named_data(tiny_llama_dir, tmp_path_factory.mktemp("patient-run"))


@pytest.mark.parametrize("what", ["adapter", "merged"])
def test_push_uploads_no_data_file_name_source_url_or_local_path(what, patient_run, tiny_llama_dir, hub_env):
    with hub_env(FakeHub(valid_tokens={CANARY})) as hub:
        assert run_cli(["push", str(patient_run), "--repo-id", REPO, "--what", what]) == 0
    uploaded = hub.created[REPO].files
    assert "README.md" in uploaded and ("manifest.json" in uploaded) == (what == "adapter")
    assert leaks(uploaded, secrets_of(patient_run, tiny_llama_dir)) == []


def _full_tmpdir(fault: str, tmpdir, monkeypatch) -> None:
    """A TMPDIR with no room: its filesystem reports 1 MiB free (the export's pre-flight), or reports room and
    then fills up while the export copies the adapter into it (ENOSPC). Other folders keep their real space."""
    import errno
    import shutil
    from collections import namedtuple

    if fault == "reported full":
        usage, real_usage = namedtuple("usage", "total used free"), shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20)
                            if str(path).startswith(str(tmpdir)) else real_usage(path))
    else:
        real_copy = shutil.copy2

        def copy2(source, target, **kwargs):
            if str(target).startswith(str(tmpdir)) and str(target).endswith(".safetensors"):
                with open(target, "wb") as half:  # what a real full disk leaves: part of the file
                    half.write(b"\0" * 1024)
                raise OSError(errno.ENOSPC, "No space left on device", str(target))
            return real_copy(source, target, **kwargs)

        monkeypatch.setattr(shutil, "copy2", copy2)


@pytest.mark.parametrize("fault", ["reported full", "ENOSPC mid-copy"])
def test_push_with_a_full_tmpdir_names_tmpdir_and_uploads_nothing(fault, run_dir, hub_env, tmp_path, capsys,
                                                                   monkeypatch):
    """Issue 22, row 7: push exports into a folder under TMPDIR before uploading it; a small TMPDIR is one disk
    error naming TMPDIR and what to do (exit 3, as every disk-full error), with nothing left there or uploaded."""
    import tempfile

    tmpdir = tmp_path / "small-tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the folder it found first
    _full_tmpdir(fault, tmpdir, monkeypatch)
    with hub_env(FakeHub(valid_tokens={CANARY})) as hub:
        assert run_cli(["push", str(run_dir), "--repo-id", REPO]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert f"Not enough free disk space in the temporary folder {tmpdir} (TMPDIR)" in err, err
    assert "Nothing was uploaded." in err
    assert "Set TMPDIR to a folder on a disk with more room (e.g. TMPDIR=/path/with/space lorakit push ...)" in err
    assert "--output" not in err  # push has no --output
    assert list(tmpdir.iterdir()) == []  # no half-written export left in TMPDIR
    assert hub.requests == [] and hub.created == {}  # nothing reached the Hub


def test_push_with_a_full_model_cache_keeps_the_caches_message(run_dir, hub_env, tmp_path, capsys, monkeypatch):
    """A full disk elsewhere than TMPDIR (the model cache a GGUF base is converted into) is not blamed on TMPDIR."""
    from lorakit.errors import DiskFullError

    def full_cache(*args, **kwargs):
        raise DiskFullError(f"The model cache {tmp_path / 'cache'} is full.", hint="Set LORAKIT_CACHE_DIR elsewhere.")

    monkeypatch.setattr("lorakit.export.push.export_run", full_cache)
    with hub_env(FakeHub(valid_tokens={CANARY})) as hub:
        assert run_cli(["push", str(run_dir), "--repo-id", REPO]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert f"error: The model cache {tmp_path / 'cache'} is full." in err and "TMPDIR" not in err
    assert hub.requests == []
