"""The build pipeline: data, event logs, training, evaluation, report. Build side (pandas, scikit-learn)."""
