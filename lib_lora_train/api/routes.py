"""The REST API under ``/medical-lora/v1``: upload DICOMs, train, poll, list and erase adapters.

Works with FastAPI 0.94 (pydantic v1, the WebUI's pin) and current FastAPI (pydantic v2):
bodies are parsed by hand (``request.json()`` / ``request.form()``) and validated with
:class:`TrainConfig`, so no pydantic model is involved. Credentials are checked before a body
is read, so an unauthenticated client cannot make the server store an upload.

Errors are JSON ``{"detail": ...}``: 400 bad input, 401 missing or wrong credentials, 403 not
allowed, 404 unknown, 409 busy. Responses never hold client file names or patient ids.
"""

import logging
import pathlib
import secrets
import shutil

from ..errors import ConfigError, InputError, LoraTrainError
from ..naming import DATASET_ID_PATTERN
from ..jobs import JobBusyError
from .uploads import UploadError, stream_files
from . import AuthRefusedError, audit_refusal

logger = logging.getLogger(__name__)

PREFIX = "/medical-lora/v1"
# API body key -> TrainConfig key; the registry fields keep their names.
JOB_KEYS = {
    "name": "name", "purpose": "purpose", "owner": "owner", "department": "department",
    "legal_basis": "legal_basis", "dpia_reference": "dpia_reference", "expires": "expires", "rank": "lora_rank",
    "alpha": "lora_alpha", "epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size",
    "learning_rate": "learning_rate", "resolution": "resolution",
}
DELETE_REASON = "erasure requested through the API"
FORGET_REASON = "patient erasure requested through the API"


def build_router(app_state):
    """Make the API router for one :class:`ApiState`.

    Args:
        app_state (`ApiState`): home, job manager, trainer factory and access control.

    Returns:
        `fastapi.APIRouter` with prefix ``/medical-lora/v1``; mount it with ``app.include_router``.
    """
    from fastapi import APIRouter, HTTPException, Request
    from starlette.concurrency import run_in_threadpool

    router = APIRouter(prefix=PREFIX)
    state = app_state

    def authorize(request, route, action=None):
        try:
            return state.auth.check(request.headers.get("authorization"),
                                    request.client.host if request.client else None, action)
        except AuthRefusedError as exc:
            _audit_refusal(state.home, exc, route)
            headers = {"WWW-Authenticate": "Basic"} if exc.status_code == 401 else None
            raise HTTPException(exc.status_code, str(exc), headers=headers) from None

    def fail(exc):
        return HTTPException(_status_for(exc), str(exc) or type(exc).__name__)

    @router.post("/datasets")
    async def upload_dataset(request: Request):
        user = authorize(request, "api:datasets", "train")
        folder = _upload_folder(state)
        try:
            try:
                paths = await stream_files(request, folder)
            except UploadError as exc:
                raise HTTPException(400, str(exc)) from None
            except Exception as exc:  # a malformed body makes the parser raise its own types
                raise HTTPException(400, f"the upload could not be parsed ({type(exc).__name__})") from None
            if not paths:
                raise HTTPException(400, "field 'files' must hold at least one uploaded file (multipart/form-data)")
            return await run_in_threadpool(_ingest_uploads, state, paths, user)
        except LoraTrainError as exc:
            raise fail(exc) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @router.post("/jobs")
    async def submit_job(request: Request):
        user = authorize(request, "api:jobs", "train")
        body = await _read_json(request, HTTPException)
        try:
            config = _job_config(state, body)
            job_id = state.jobs.submit(lambda: state.make_trainer(config), actor=user, lock=state.lock,
                                       after_register=state.after_register, name=config.name,
                                       output_dir=config.output_dir, dataset_dir=config.train_data_dir)
        except LoraTrainError as exc:
            raise fail(exc) from None
        return {"job_id": job_id}

    @router.get("/jobs/{job_id}")
    def job_status(job_id: str, request: Request):
        authorize(request, "api:job_status")
        try:
            status = state.jobs.status(job_id)
        except LoraTrainError as exc:
            raise fail(exc) from None
        return {"state": status.state, "step": status.step, "total_steps": status.total_steps, "loss": status.loss,
                "adapter": status.adapter, "error": status.error}

    @router.post("/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, request: Request):
        authorize(request, "api:job_cancel", "train")
        try:
            status = state.jobs.cancel(job_id)
        except LoraTrainError as exc:
            raise fail(exc) from None
        return {"state": status.state}

    @router.get("/adapters")
    def list_adapters(request: Request):
        authorize(request, "api:adapters")
        from ..registry import Registry

        with Registry(state.home) as registry:
            return [record.to_dict() for record in registry.list()]

    @router.delete("/adapters/{name}")
    def delete_adapter(name: str, request: Request):
        user = authorize(request, "api:adapter_delete", "delete")
        from ..registry import Registry

        try:
            with Registry(state.home) as registry:
                return registry.delete(name, actor=user, reason=DELETE_REASON, hooks=state.delete_hooks)
        except LoraTrainError as exc:
            raise fail(exc) from None

    @router.post("/forget-patient")
    async def forget_patient(request: Request):
        user = authorize(request, "api:forget_patient", "delete")
        body = await _read_json(request, HTTPException)
        patient_id = body.get("patient_id")
        if not isinstance(patient_id, str) or not patient_id.strip() or set(body) - {"patient_id"}:
            raise HTTPException(400, "the body must be {\"patient_id\": \"<PatientID>\"} with a non-empty string")
        try:
            return await run_in_threadpool(_forget_patient, state, patient_id.strip(), user)
        except LoraTrainError as exc:
            raise fail(exc) from None

    return router


def _forget_patient(state, patient_id, user):
    from ..workflow import forget_patient

    return forget_patient(state.home, patient_id, actor=user, reason=FORGET_REASON, hooks=state.delete_hooks)


def _status_for(exc):
    from ..registry import AdapterNameInUseError

    if isinstance(exc, LookupError):  # unknown job, adapter or dataset
        return 404
    if isinstance(exc, (JobBusyError, AdapterNameInUseError)):
        return 409
    if isinstance(exc, (ConfigError, InputError, ValueError)):
        return 400
    return 409


def _audit_refusal(home, exc, route):
    audit_refusal(home, exc.user, route, exc.reason_code)
    logger.warning("API request to %s refused (%s)", route, exc.reason_code)


async def _read_json(request, http_error):
    try:
        body = await request.json()
    except ValueError:
        raise http_error(400, "the request body is not valid JSON; send a JSON object") from None
    if not isinstance(body, dict):
        raise http_error(400, "the request body must be a JSON object")
    return body


def _upload_folder(state):
    """A fresh private folder for one upload, inside the data home."""
    folder = state.home.ensure().root / "uploads" / secrets.token_hex(8)
    folder.mkdir(mode=0o700, parents=True)
    return folder


def _ingest_uploads(state, paths, user):
    """Ingest the uploaded files (saved under positions, ``0001.upload``; the client's file
    name may carry a patient name, so it is neither stored nor returned)."""
    from ..config import IngestConfig
    from ..dataset.prepare import new_dataset_id
    from ..dicom.pseudonym import Pseudonymizer, load_or_create_site_key
    from ..workflow import ingest

    home = state.home
    dataset_id = new_dataset_id()
    pseudonymizer = Pseudonymizer(load_or_create_site_key(home.site_key_path))
    result = ingest(home, paths, home.datasets_dir / dataset_id, state.ingest_config or IngestConfig(),
                    pseudonymizer, actor=user, dataset_id=dataset_id)
    rejected = [{"file": o.label, "reason": o.message or o.code} for o in result.outcomes if o.status == "rejected"]
    return {"dataset_id": result.dataset_id, "images": len(result.images), "rejected": rejected}


def _job_config(state, body):
    """Validate a job body into a :class:`TrainConfig`.

    Raises:
        ConfigError: unknown key, bad value or missing registry field (the message names the key).
        DatasetNotFoundError: no prepared dataset has this id.
    """
    from ..config import TrainConfig
    from ..workflow import check_adapter_name_free, check_registry_fields

    unknown = sorted(set(body) - set(JOB_KEYS) - {"dataset_id"})
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; allowed: dataset_id, {', '.join(JOB_KEYS)}")
    dataset_dir = _dataset_dir(state.home, body.get("dataset_id"))
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("name is required: the adapter name used in prompts as <lora:NAME:1.0>")
    values = {JOB_KEYS[key]: value for key, value in body.items() if key in JOB_KEYS}
    output_root = pathlib.Path(state.output_root or state.home.adapters_dir)
    config = TrainConfig.from_dict(dict(values, train_data_dir=str(dataset_dir), output_dir=str(output_root / name)))
    check_registry_fields(config)
    check_adapter_name_free(state.home, output_root, config.name)
    return config


class DatasetNotFoundError(LoraTrainError, LookupError):
    """No prepared dataset with this id in the data home."""


def _dataset_dir(home, dataset_id):
    if not isinstance(dataset_id, str) or not DATASET_ID_PATTERN.fullmatch(dataset_id):
        raise ConfigError("dataset_id is required: the id returned by POST /datasets")
    folder = home.datasets_dir / dataset_id
    if not (folder / "manifest.json").is_file():
        raise DatasetNotFoundError(f"no dataset {dataset_id!r}; upload DICOMs with POST /datasets first")
    return folder
