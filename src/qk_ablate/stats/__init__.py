"""What comes out of lm-eval runs: reading run folders, paired bootstrap comparisons, seeds,
the baseline's signal test, the report and the CI gate. Imports neither torch nor an engine."""
