"""Step 1, data: upload (or the bundled example in one click), check, token statistics with the length histogram,
redaction. Each route is the library call behind `lorakit data check / stats / redact`."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lorakit.config import DEFAULT_SYSTEM_PROMPT, EMBEDDED_MODEL_ALIAS, ModelConfig
from lorakit.errors import LorakitError
from lorakit.runtime.atomic_files import atomic_write_bytes, fsync_directory

__all__ = ["EXAMPLE_DATA", "MAX_UPLOAD_BYTES", "router"]

router = APIRouter(prefix="/api/data")
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
# The README's example data (examples/medical_qa.jsonl of the lorakit source tree: src/lorakit/studio/ -> root).
EXAMPLE_DATA = Path(__file__).resolve().parents[3] / "examples" / "medical_qa.jsonl"


class FilesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    files: list[str] = Field(..., min_length=1)


class StatsRequest(FilesRequest):
    tokenizer: str = EMBEDDED_MODEL_ALIAS
    max_length: int = Field(ModelConfig.model_fields["max_length"].default, ge=1)


class RedactRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str


def _workspace(request: Request):
    return request.app.state.workspace


@router.get("/files")
def list_files(request: Request) -> dict:
    """The data files, each with its kind: example answers (SFT) or preference pairs (DPO/ORPO)."""
    from lorakit.studio.training_method import data_kind

    workspace = _workspace(request)
    files = [{**f, "kind": data_kind(workspace.data_dir / f["name"])} for f in workspace.data_files()]
    return {"files": files, "folder": str(workspace.data_dir)}


@router.put("/files/{name}")
async def upload(name: str, request: Request) -> dict:
    """The request body is the file; an existing file of that name is refused (never replaced)."""
    path = _workspace(request).data_path(name, exists=False)
    if path.exists():
        raise _already_exists(path)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD_BYTES:
            raise LorakitError(f"{name} is larger than {MAX_UPLOAD_BYTES // 2**20} MiB.",
                               hint=f"Copy it into {path.parent} instead; it then appears in the list.")
    await run_in_threadpool(_create_file, path, bytes(body))
    return {"name": name, "bytes": len(body)}


def _already_exists(path: Path) -> LorakitError:
    return LorakitError(f"{path} already exists.", hint="Rename the file before uploading, or pick it from the list.")


def _create_file(path: Path, data: bytes) -> None:
    """Write a new file whole or not at all, never over an existing one: the bytes go to a hidden staging file
    (atomic_write_bytes: fsynced; a full disk is a DiskFullError and leaves nothing) which is then hard-linked
    to `path`, and linking fails when `path` exists, even if another upload created it meanwhile."""
    staging = path.with_name(f".{path.name}.upload-{uuid.uuid4().hex[:8]}")
    atomic_write_bytes(staging, data)
    try:
        os.link(staging, path)
    except FileExistsError:
        raise _already_exists(path) from None
    finally:
        staging.unlink(missing_ok=True)
    fsync_directory(path.parent)


@router.post("/example")
async def use_example(request: Request) -> dict:
    """Copy the bundled examples/medical_qa.jsonl into the data folder (kept if an identical copy is there), so a
    first-time user can go through every step before preparing their own file."""
    if not EXAMPLE_DATA.is_file():
        raise LorakitError(f"The bundled example {EXAMPLE_DATA} is not in this installation.",
                           hint="It ships with the lorakit source (examples/medical_qa.jsonl); upload your own file.")
    path = _workspace(request).data_path(EXAMPLE_DATA.name, exists=False)
    data = EXAMPLE_DATA.read_bytes()
    copied = not path.exists()
    if copied:
        await run_in_threadpool(_create_file, path, data)
    elif path.read_bytes() != data:
        raise LorakitError(f"{path} exists and is not the bundled example.",
                           hint="Rename or remove that file, or tick it in the list if it is the one you want.")
    return {"name": path.name, "records": sum(1 for line in data.splitlines() if line.strip()), "copied": copied}


@router.get("/files/{name}")
def download(name: str, request: Request) -> FileResponse:
    """A data file or its histogram PNG (shown on the page)."""
    return FileResponse(_workspace(request).data_path(name))


def _check(paths: list[str]) -> dict:
    from lorakit.data.validate import check_files

    report = check_files(paths)
    result = report.to_json()
    result["exit_code"] = report.exit_code()
    return result


@router.post("/check")
async def check(body: FilesRequest, request: Request) -> dict:
    """`lorakit data check FILES --json`: every issue with file:line, field and fix; privacy findings masked."""
    workspace = _workspace(request)
    paths = [str(workspace.data_path(name)) for name in body.files]
    result = await run_in_threadpool(_check, paths)
    root = str(workspace.data_dir) + "/"
    for issue in result["issues"]:  # the page shows names relative to the data folder
        issue["path"] = issue["path"].removeprefix(root)
        issue["message"] = issue["message"].replace(root, "")
    return result


def _stats(paths: list[str], tokenizer_name: str, max_length: int) -> dict:
    from lorakit.data.stats import default_histogram_path, token_stats, write_histogram
    from lorakit.data.validate import DataChecker
    from lorakit.model.named_tokenizer import load_named_tokenizer

    tokenizer = load_named_tokenizer(tokenizer_name)
    checker = DataChecker("auto", scan_phi=False)
    stats = token_stats((c for p in paths for c in checker.read(p)), tokenizer, DEFAULT_SYSTEM_PROMPT, max_length)
    errors = len(checker.finish().errors)
    png = write_histogram(stats, default_histogram_path(paths[0]), paths[0].rsplit("/", 1)[-1]) if stats.examples else None
    return {**stats.to_json(), "histogram": png.name if png else None, "skipped_records_with_errors": errors}


@router.post("/stats")
async def stats(body: StatsRequest, request: Request) -> dict:
    """`lorakit data stats FILES --tokenizer NAME --max-length N`: token counts and the histogram PNG."""
    paths = [str(_workspace(request).data_path(name)) for name in body.files]
    return await run_in_threadpool(_stats, paths, body.tokenizer, body.max_length)


@router.post("/redact")
async def redact(body: RedactRequest, request: Request) -> dict:
    """`lorakit data redact IN`: a new file STEM.redacted.jsonl next to IN, whatever IN's format (the copy is
    JSON Lines); IN is never changed."""
    from lorakit.data.redact import redact_file, redacted_path

    workspace = _workspace(request)
    source = workspace.data_path(body.file)
    target = workspace.data_path(redacted_path(source).name, exists=False)
    summary = await run_in_threadpool(redact_file, source, target)
    return {"output": target.name, "records": summary.records, "changed_records": summary.changed_records,
            "by_kind": dict(summary.by_kind), "unparsed_lines": summary.unparsed_lines}
