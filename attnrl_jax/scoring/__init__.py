"""Scoring: step segmentation, the scoring forward (log-probs, entropy, FCI), branch selection."""
