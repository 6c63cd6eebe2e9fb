"""Offline evaluation: splits, metrics, baselines (popularity, recent history, item-kNN, SASRec),
the system itself replayed through the real pipeline, and the harness that scores them alike."""
