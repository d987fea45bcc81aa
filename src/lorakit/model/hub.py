"""Download a model snapshot from the Hugging Face Hub, turning its failures into actionable messages.

The token comes from huggingface_hub itself (HF_TOKEN or `hf auth login`); lorakit never reads,
prints or stores it.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lorakit.errors import HubAccessError

__all__ = ["download_model", "model_page_url"]

SAFE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]


def model_page_url(repo_id: str) -> str:
    return f"{constants.ENDPOINT.rstrip('/')}/{repo_id}"


def download_model(repo_id: str, revision: str | None, *, allow_pickle: bool, trust_remote_code: bool) -> Path:
    """Fetch (or reuse from the HF cache) the files needed to load `repo_id`; safetensors only by default."""
    patterns = SAFE_PATTERNS + (PICKLE_PATTERNS if allow_pickle else []) + (["*.py"] if trust_remote_code else [])
    page = model_page_url(repo_id)
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise HubAccessError(
            f"{repo_id} is a gated model and this account has no access to it.",
            hint=f"Request access on the model page {page}, then log in with `hf auth login` "
            "(or set HF_TOKEN) and run the command again.",
        ) from None
    except RevisionNotFoundError:
        raise HubAccessError(
            f"{repo_id} has no revision '{revision}'.", hint=f"Check model.revision against {page}/tree/main."
        ) from None
    except RepositoryNotFoundError:
        raise HubAccessError(
            f"Model '{repo_id}' was not found on the Hub (or it is private and you are not logged in).",
            hint=f"Check the spelling of model.name (it should open at {page}); for a private model run "
            "`hf auth login` first.",
        ) from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise HubAccessError(
                f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it.",
                hint="Unset HF_HUB_OFFLINE to download it, or point model.name at a local directory.",
            ) from None
        raise HubAccessError(
            f"Could not reach the Hugging Face Hub at {constants.ENDPOINT} to download {repo_id}.",
            hint="Check your network connection or proxy. If the model was downloaded before, set "
            "HF_HUB_OFFLINE=1 to use the cached copy.",
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise HubAccessError(
                f"The Hub rejected the credentials used to download {repo_id} (401 Unauthorized).",
                hint="Your token is missing, expired or invalid: run `hf auth login` again, or fix HF_TOKEN.",
            ) from None
        raise HubAccessError(
            f"The Hub answered HTTP {status} while downloading {repo_id}.",
            hint="Try again later; if it persists, check the status of the Hub and your network.",
        ) from None
    except OSError as exc:  # connection refused, DNS failure, timeouts surface as OSError subclasses
        raise HubAccessError(
            f"Could not reach the Hugging Face Hub at {constants.ENDPOINT} to download {repo_id} "
            f"({type(exc).__name__}).",
            hint="Check your network connection or proxy. If the model was downloaded before, set "
            "HF_HUB_OFFLINE=1 to use the cached copy.",
        ) from None
