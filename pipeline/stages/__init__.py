"""One module per stage. A stage is a recipe step: it takes config slices and upstream output dirs, writes its
output dir and returns a small JSON-able summary. Stages know nothing of the CLI, the cache or MLflow."""
