"""The sweep: the grid (how Hydra's product becomes a comparison's jobs), selection on dev, the shared prefix computed
before the jobs, and the sweep's MLflow callbacks (parent run, reuse of finished runs). Where its jobs run is
`pipeline.launch`'s concern."""
