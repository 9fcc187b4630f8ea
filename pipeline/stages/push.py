"""Stage 5 (hub.push=true only): publish the saved adapter or model with its completed card on the Hugging Face Hub.

As the sentence-transformers docs do it: `model.push_to_hub(repo_id)`, here with `local_model_path` so that exactly
what was saved and evaluated is uploaded (the adapter alone for LoRA), with the card the model_card stage completed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pipeline.config import HubConfig, ModelConfig
from pipeline.models import load_model

PLACEHOLDER_ID = "sentence_transformers_model_id"  # what sentence-transformers' card loads in its usage example


def push(hub: HubConfig, model_cfg: ModelConfig, finetune_dir: Path, card_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # 1. The saved model dir, with the completed card as its README (the usage example loads the new repo)
        folder = Path(tmp) / "model"
        shutil.copytree(finetune_dir / "model", folder)
        card = (card_dir / "README.md").read_text().replace(PLACEHOLDER_ID, hub.repo_id)
        (folder / "README.md").write_text(card)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

        # 2. Push it: creates the repo if needed (private if asked), uploads the folder as one commit
        model = load_model(model_cfg, str(finetune_dir / "model"))
        commit_url = model.push_to_hub(
            hub.repo_id,
            private=hub.private,
            local_model_path=str(folder),  # upload this folder as is, rather than re-saving the model
            exist_ok=True,  # a new commit on an existing repo
            commit_message="Add the model trained by lora-vs-full",
        )
    return {"repo_id": hub.repo_id, "commit_url": commit_url, "files": files}
