"""`lorakit push`: export a run (adapter, merged or GGUF) to a temporary folder and upload it to the Hub.

Private by default, with the model card; a private push into an existing public repo is refused before
anything is uploaded. Refuses a run whose training data held possible patient identifiers
(allowed with `--allow-phi`) unless the caller states approval, which the card then records. The token comes
from huggingface_hub itself (HF_TOKEN or `hf auth login`); lorakit never reads, prints or stores it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from lorakit.errors import DataError, DiskFullError, HubAccessError
from lorakit.evaluation.card_section import card_evaluation
from lorakit.export.disk_estimate import estimated_export_bytes
from lorakit.export.run_export import ExportRequest, ExportResult, export_run
from lorakit.export.steps import ExportSteps
from lorakit.model.hub import model_page_url
from lorakit.run.layout import MODEL_CARD
from lorakit.run.model_card import model_card
from lorakit.run.source import Permissions, RunSource, read_finished_run
from lorakit.runtime.atomic_files import is_disk_full
from lorakit.runtime.logging import get_logger

__all__ = ["PUSH_WHAT", "APPROVAL_NOTE", "PushRequest", "PushResult", "check_publishable", "push_run"]

log = get_logger("export.push")

PUSH_WHAT = ("adapter", "merged", "gguf")
APPROVAL_NOTE = ("the uploader stated (`lorakit push --i-have-approval`) that publishing a model trained on this "
                 "data was approved, although the privacy scan flagged possible identifiers in it.")


@dataclass(frozen=True)
class PushRequest:
    repo_id: str
    private: bool = True
    what: str = "adapter"
    approved: bool = False
    quant: str = "f16"  # for what="gguf"
    permissions: Permissions = Permissions()  # what the base model may do (merged and gguf load it)


@dataclass(frozen=True)
class PushResult:
    url: str
    files: list[str]
    private: bool  # the repo's visibility as the Hub reported it (asked before uploading)


def check_publishable(run: RunSource, approved: bool) -> str | None:
    """The approval note for the card, or DataError when flagged data would be published unapproved."""
    findings = run.manifest["data"].get("phi_findings_allowed", 0)
    if not (run.manifest["settings"].get("allow_phi") and findings):
        return None
    if approved:
        return APPROVAL_NOTE
    raise DataError(", ".join(run.config.data.train_files), None, None,
                    f"the privacy scan found {findings} possible patient identifier(s) in the training data and "
                    "training was allowed with --allow-phi; a model can repeat what it was trained on, so it is "
                    "not uploaded.",
                    hint="Redact the data (`lorakit data redact IN OUT`) and train again, or, if publishing was "
                    "approved (e.g. by your ethics board or data owner), pass --i-have-approval; the card records it.")


def _hub_error(exc: Exception, request: PushRequest) -> HubAccessError:
    """One message per failure of create_repo/upload_folder."""
    response = getattr(exc, "response", None)
    status = response.status_code if isinstance(exc, HfHubHTTPError) and response is not None else None
    where = model_page_url(request.repo_id)
    if status == 401 and get_token() is None:
        return HubAccessError(f"Uploading to {request.repo_id} needs a Hugging Face login (401 Unauthorized).",
                              hint="Run `hf auth login` with a token that has write access (or set HF_TOKEN).")
    if status == 401:
        return HubAccessError(f"The Hub rejected your token while uploading to {request.repo_id} (401 Unauthorized).",
                              hint="The token is wrong, expired or revoked: run `hf auth login` again, or fix HF_TOKEN.")
    if status == 403:
        return HubAccessError(
            f"Your token may not write to {request.repo_id} (403 Forbidden): it is read-only, or the namespace "
            f"'{request.repo_id.split('/')[0]}' is not yours or your organization's.",
            hint="Use a token with write access (hf.co/settings/tokens) and a repo id in your own namespace.")
    if status is not None:
        return HubAccessError(f"The Hub answered HTTP {status} while uploading to {request.repo_id} ({where}).",
                              hint="Try again later; nothing is committed until an upload completes.")
    return HubAccessError(
        f"The connection to the Hugging Face Hub at {constants.ENDPOINT} failed while uploading to "
        f"{request.repo_id} ({type(exc).__name__}).",
        hint="Check your network and run the command again: a commit lands whole or not at all, so nothing "
        "partial was published.")


def _actual_visibility(api: HfApi, request: PushRequest, url: str) -> bool:
    """Whether the repo is private, as the Hub says; HubAccessError before any upload when a private push would
    land in an existing public repo (create_repo with exist_ok leaves an existing repo's visibility as it is)."""
    private = api.repo_info(request.repo_id, repo_type="model").private is True
    if request.private and not private:
        raise HubAccessError(
            f"{request.repo_id} already exists on the Hub and is public, and this push is private (the default); "
            "nothing was uploaded.",
            hint=f"Choose another --repo-id, make {url} private in its settings on the Hub, or pass --public to "
            "publish into the public repo.")
    if not request.private and private:
        log.warning("%s already exists and is private; --public does not change that, so the upload is private",
                    request.repo_id)
    return private


def _is_network_error(exc: BaseException) -> bool:
    # huggingface_hub talks through httpx (or its fork); its transport errors are not OSErrors.
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0].startswith("httpx")


def _tmpdir_full(run: RunSource, request: PushRequest, tmpdir: Path) -> DiskFullError:
    """The export's own advice (--output, output_dir) does not apply to push, which has neither: TMPDIR is the
    lever. Called after the export failed, so its size estimate resolves nothing new (no download, no check)."""
    needed, free = estimated_export_bytes(run, request.what, request.quant), shutil.disk_usage(tmpdir).free
    return DiskFullError(
        f"Not enough free disk space in the temporary folder {tmpdir} (TMPDIR), where `lorakit push` exports the "
        f"{request.what} before uploading it (about {needed / 2**30:.2f} GiB; {free / 2**30:.2f} GiB free there "
        "now). Nothing was uploaded.",
        hint=f"Set TMPDIR to a folder on a disk with more room (e.g. TMPDIR=/path/with/space lorakit push ...), or "
        f"free some space in {tmpdir}.")


@contextlib.contextmanager
def _exported_in_tmpdir(run: RunSource, request: PushRequest, approval: str | None,
                        on_step: Callable[[str, str], None] | None) -> Iterator[tuple[Path, ExportResult]]:
    """The export and its card in a new folder under TMPDIR (removed on leaving). A TMPDIR too small for it (the
    export's free-space check, or a write that fills the disk) is one DiskFullError naming TMPDIR; nothing is
    left there."""
    with tempfile.TemporaryDirectory(prefix="lorakit-push-") as scratch:
        folder = Path(scratch) / request.what
        try:
            result = export_run(run.adapter_dir, ExportRequest(request.what, output=folder, quant=request.quant,
                                                               permissions=request.permissions), on_step)
            (folder / MODEL_CARD).write_text(model_card(
                run, request.what, result.notes, approval, result.card_sections, evaluation=card_evaluation(run)))
        except (DiskFullError, OSError) as exc:
            if not _fills(exc, Path(scratch)):
                raise  # e.g. a full model cache while a GGUF base is converted: its own message names the cache
            raise _tmpdir_full(run, request, Path(scratch).parent) from None
        yield folder, result


def _fills(exc: DiskFullError | OSError, scratch: Path) -> bool:
    """Whether a disk-full error is about the push's folder: a DiskFullError names the path it could not write
    (the export's free-space check names `scratch`, a failed write the file inside it)."""
    if isinstance(exc, OSError):
        return is_disk_full(exc) and (exc.filename is None or str(scratch) in str(exc.filename))
    return str(scratch) in exc.message


def push_run(path: str | Path, request: PushRequest, on_step: Callable[[str, str], None] | None = None) -> PushResult:
    run = read_finished_run(path)
    approval = check_publishable(run, request.approved)
    steps = ExportSteps(on_step)
    with _exported_in_tmpdir(run, request, approval, on_step) as (folder, result):
        with steps.step("upload", f"{len(result.files)} files to {request.repo_id} "
                                  f"({'private' if request.private else 'public'})"):
            api = HfApi(endpoint=constants.ENDPOINT)
            try:
                url = api.create_repo(request.repo_id, private=request.private, exist_ok=True)
                private = _actual_visibility(api, request, url)
                api.upload_folder(repo_id=request.repo_id, folder_path=folder,
                                  commit_message=f"lorakit: {request.what} of {run.run_dir.name}")
            except HfHubHTTPError as exc:
                raise _hub_error(exc, request) from None
            except Exception as exc:
                if _is_network_error(exc):
                    raise _hub_error(exc, request) from None
                raise
    log.info("uploaded %s to %s", request.what, url)
    return PushResult(str(url), result.files, private)
