"""The sweep: the grid (how Hydra's product becomes a comparison's jobs), selection on dev, the shared prefix computed
before the jobs, the sweep's MLflow callbacks (parent run, reuse of finished runs), and `make decide` (decide: grid edges
extended, fresh seeds in rounds until the sequential verdict is decided). Where its jobs run is
`pipeline.launch`'s concern."""
