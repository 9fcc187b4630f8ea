"""The MLflow Model Registry: a run's trained model as a registered MLflow model that loads back with MLflow's API.

MLflow's own `sentence_transformers` flavour (`mlflow.sentence_transformers.save_model`) stores the model; no flavour
is hand-written. A LoRA run's adapter is merged into its base first (peft `merge_and_unload`, as
`pipeline.tools.export` does), so the registered model is one standalone model: `mlflow.sentence_transformers.
load_model("models:/<name>/<version>")` needs neither peft nor the base model from the Hub.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import ModelConfig

ARTIFACT_PATH = "mlflow_model"  # where the MLflow model is logged on the run, beside the pipeline's `model/`
REQUIREMENTS = ("sentence-transformers", "transformers", "torch")


def register_run_model(client: MlflowClient, run_id: str, name: str) -> ModelVersion:
    """Log run `run_id`'s trained model (its `model/` artifact) as an MLflow model on that run and register it as a
    new version of `name` (created if needed). Returns the model version."""
    import mlflow.sentence_transformers

    from pipeline.models import load_model

    run = client.get_run(run_id)
    params = run.data.params
    model_cfg = ModelConfig(
        name=params["model.name"],
        revision=_none(params.get("model.revision")),
        max_seq_length=int(params["model.max_seq_length"]) if _none(params.get("model.max_seq_length")) else None,
        trust_remote_code=params.get("model.trust_remote_code") == "True",
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = client.download_artifacts(run_id, "model", tmp)
        adapter = (Path(model_dir) / "adapter_config.json").is_file()
        model = load_model(model_cfg, model_dir, merge=True)  # an adapter merged into its base: one standalone model
        saved = Path(tmp) / ARTIFACT_PATH
        # pinned requirements: MLflow's inference of them loads the model again in a subprocess (~30 s)
        mlflow.sentence_transformers.save_model(
            model, str(saved), pip_requirements=[f"{p}=={version(p).split('+')[0]}" for p in REQUIREMENTS]
        )
        client.log_artifacts(run_id, str(saved), ARTIFACT_PATH)
    try:
        client.create_registered_model(name, description="lora-vs-full: the fine-tuned embedding model")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
        run_id=run_id,
        tags={
            "method": run.data.tags.get("method", ""),
            "run_name": run.info.run_name or "",
            "base_model": model_cfg.name,
            "merged_adapter": str(adapter).lower(),
        },
    )


def _none(value: str | None) -> str | None:
    return None if value in (None, "None", "") else value
