"""Offline evaluation: SASRec, the intent pipeline, the system itself replayed through the real
pipeline, and the harness that scores them alike with the splits, metrics and baselines of
offline/."""
