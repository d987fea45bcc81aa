"""Steps 2-4 and 7: the run's config and memory plan, the train / eval / export / push jobs, and a run's
evaluation next to the run it started from (evaluation/compare_runs.py). Each job is the CLI command itself
(`lorakit train RUN/studio.yaml`, `lorakit eval RUN`, ...) run by jobs.py."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lorakit.errors import LorakitError
from lorakit.evaluation.compare_runs import compare_with_start
from lorakit.run.layout import FINAL, LOSS_CURVE, REPORT_FILE
from lorakit.studio.jobs import start_job, stop_job
from lorakit.studio.presets import PRESETS
from lorakit.studio.run_config import STUDIO_CONFIG, RunChoices, studio_config, write_studio_config
from lorakit.studio.run_status import eval_results, run_summary
from lorakit.studio.training_method import METHODS

__all__ = ["router"]

router = APIRouter(prefix="/api")


class PlanRequest(RunChoices):
    gpu_memory: str | None = Field(None, description="e.g. 8GB; empty plans for this machine's GPU.")


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resume: bool = False
    overwrite: bool = False
    allow_phi: bool = False


class EvalRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    safety: bool = True
    knowledge: bool = False  # the shipped exam questions; --limit caps the questions per benchmark too
    limit: int | None = Field(5, ge=1)


class ExportRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str = "merged"
    quant: str | None = None
    overwrite: bool = False


class PushRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo_id: str = Field(..., min_length=1)
    private: bool = True
    what: str = "adapter"
    approved: bool = False


def _workspace(request: Request):
    return request.app.state.workspace


@router.get("/presets")
def presets() -> dict:
    return {"presets": {name: {"description": p["description"], "overrides": list(p["overrides"])}
                        for name, p in PRESETS.items()}}


@router.get("/gpu")
def gpu() -> dict:
    """The GPU that an empty "GPU memory" field plans for (the planner's own reading of it); none on a machine
    without CUDA, where the page then pre-fills nothing and asks which card to plan for."""
    import torch

    from lorakit.plan.memory import GIB
    from lorakit.plan.run_plan import device_memory_bytes

    if not torch.cuda.is_available():
        return {"cuda": False, "name": None, "memory_gib": None}
    name = torch.cuda.get_device_properties(torch.cuda.current_device()).name
    return {"cuda": True, "name": name, "memory_gib": round(device_memory_bytes(True) / GIB, 1)}


@router.get("/runs")
def runs(request: Request) -> dict:
    """Every run, and those finished (a run can start from their adapter: step 2's "start from")."""
    workspace = _workspace(request)
    names = workspace.runs()
    return {"runs": names, "finished": [n for n in names if (workspace.run_dir(n) / FINAL).is_dir()]}


@router.get("/methods")
def methods() -> dict:
    return {"methods": METHODS}


@router.post("/runs")
def save_run(body: RunChoices, request: Request) -> dict:
    """Write RUN/studio.yaml (validated first: every config problem at once)."""
    path = write_studio_config(_workspace(request), body)
    return {"config_path": str(path), "command": f"lorakit train {path}"}


def _plan(choices: PlanRequest, workspace) -> dict:
    from lorakit.plan.memory import GIB, checkpointing_text
    from lorakit.plan.run_plan import parse_memory_size
    from lorakit.training.planned_pairs import plan_run_on_data

    config, _ = studio_config(workspace, choices)
    memory = parse_memory_size(choices.gpu_memory) if choices.gpu_memory and choices.gpu_memory.strip() else None
    plan, _, model_config, pairs = plan_run_on_data(config, memory)  # a preference run: on its own pairs

    def row(candidate) -> dict:
        settings = candidate.settings
        return {"quantization": settings.quantization, "micro_batch": candidate.micro_batch,
                "checkpointing": checkpointing_text(settings.checkpointed_layers, plan.layers),
                "offload": settings.offload_activations, "peak_gib": round(candidate.estimate.peak_allocated / GIB, 2),
                "on_gpu_gib": round(candidate.estimate.peak_on_gpu() / GIB, 2),
                "relative_time": round(candidate.relative_time, 2), "fits": candidate.fits}

    return {"model": config.model.name, "model_type": model_config.get("model_type"),
            "max_length": config.model.max_length, "lora_r": config.lora.r,
            "gpu_gib": round(plan.gpu_memory_bytes / GIB, 1), "chosen": row(plan.chosen),
            "breakdown": [[term, round(gib, 2)] for term, gib in plan.chosen.estimate.rows()],
            "candidates": [row(c) for c in plan.candidates[:5]],
            "pairs": pairs.note if pairs else None,  # which pairs a preference plan counted (lorakit plan's line)
            "command": "lorakit plan CONFIG" + (f" --gpu-memory {choices.gpu_memory}" if memory else "")}


@router.post("/plan")
async def plan(body: PlanRequest, request: Request) -> dict:
    """`lorakit plan CONFIG [--gpu-memory SIZE]`: the predicted peak and the fastest settings that fit."""
    return await run_in_threadpool(_plan, body, _workspace(request))


@router.get("/runs/{run}")
def run_status(run: str, request: Request) -> dict:
    return run_summary(_workspace(request).run_dir(run))


def _config_path(run_dir: Path) -> Path:
    path = run_dir / STUDIO_CONFIG
    if not path.is_file():
        raise LorakitError(f"{run_dir.name} has no {STUDIO_CONFIG}.", hint="Save the run in step 2 first.")
    return path


@router.post("/runs/{run}/train")
def train(run: str, body: TrainRequest, request: Request) -> dict:
    """`lorakit train RUN/studio.yaml [--resume | --overwrite] [--allow-phi]` in the background."""
    if body.resume and body.overwrite:
        raise LorakitError("--resume and --overwrite contradict each other; pick one.")
    run_dir = _workspace(request).run_dir(run)
    args = ["train", str(_config_path(run_dir))]
    args += ["--resume"] * body.resume + ["--overwrite"] * body.overwrite + ["--allow-phi"] * body.allow_phi
    request.app.state.chat_models.forget(run_dir)
    return start_job(run_dir, "train", args).to_json()


@router.post("/runs/{run}/{job}/stop")
def stop(run: str, job: str, request: Request) -> dict:
    """Ctrl-C for the job; `lorakit train` then prints the `--resume` command and exits 130."""
    if job not in ("train", "eval", "export"):
        raise LorakitError(f"No job '{job}'.")
    return stop_job(_workspace(request).run_dir(run), job, timeout_s=0.5).to_json()


@router.post("/runs/{run}/eval")
def evaluate(run: str, body: EvalRequestBody, request: Request) -> dict:
    """`lorakit eval RUN [--safety] [--knowledge] [--limit N]` in the background (writes RUN/eval/ and
    RUN/report.html)."""
    run_dir = _workspace(request).run_dir(run)
    args = ["eval", str(run_dir)] + ["--safety"] * body.safety + ["--knowledge"] * body.knowledge
    args += ["--limit", str(body.limit)] if body.limit else []
    return start_job(run_dir, "eval", args).to_json()


@router.get("/runs/{run}/eval")
def evaluation(run: str, request: Request) -> dict:
    return {"results": eval_results(_workspace(request).run_dir(run))}


@router.get("/runs/{run}/compare")
def compare(run: str, request: Request) -> dict:
    """The run's evaluation next to that of the run it started from (training.init_adapter), with verdicts."""
    return compare_with_start(_workspace(request).run_dir(run))


@router.post("/runs/{run}/export")
def export(run: str, body: ExportRequestBody, request: Request) -> dict:
    """`lorakit export RUN --format F [--quant Q] [--overwrite]` in the background."""
    run_dir = _workspace(request).run_dir(run)
    args = ["export", str(run_dir), "--format", body.format] + (["--quant", body.quant] if body.quant else [])
    return start_job(run_dir, "export", args + ["--overwrite"] * body.overwrite).to_json()


@router.post("/runs/{run}/push")
def push(run: str, body: PushRequestBody, request: Request) -> dict:
    """`lorakit push RUN --repo-id ID [--public] [--what W]` in the background (shares the export job slot)."""
    run_dir = _workspace(request).run_dir(run)
    args = ["push", str(run_dir), "--repo-id", body.repo_id, "--what", body.what]
    args += ([] if body.private else ["--public"]) + (["--i-have-approval"] if body.approved else [])
    return start_job(run_dir, "export", args).to_json()


@router.get("/runs/{run}/files/{name}")
def run_file(run: str, name: str, request: Request) -> FileResponse:
    """The run's report, loss curve and job logs, as the CLI wrote them."""
    allowed = {REPORT_FILE, LOSS_CURVE, "studio.yaml", "studio-train.log", "studio-eval.log",
               "studio-export.log"}
    if name not in allowed:
        raise LorakitError(f"'{name}' is not a run file the studio shows.")
    path = _workspace(request).run_dir(run) / name
    if not path.is_file():
        raise LorakitError(f"{path} does not exist yet.")
    return FileResponse(path, media_type="text/plain; charset=utf-8" if name.endswith((".log", ".yaml")) else None)
