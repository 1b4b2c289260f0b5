"""Recurrent sequence classifiers: what a model is (`model`), where data comes from (`data`), how it learns
(`trainer`), how it is judged (`evaluate`) and the command line that ties them together (`train`)."""

from models.model import ModelConfig, SequenceClassifier, parameter_count_formula

__all__ = ["ModelConfig", "SequenceClassifier", "parameter_count_formula"]
