"""Statistics of the comparison, pure (numpy, scipy, statsmodels; nothing else of the pipeline): the verdict's
estimators and their targets (seeds, sequential), the group-sequential design that adds seeds until the verdict is
decided (sequential), advice on seeds needed (advice), per-dataset heterogeneity (heterogeneity), outlier seeds
(robust), the smallest rank that suffices (rank), and a generator of NDCG@10-like scores to check them (generator)."""
