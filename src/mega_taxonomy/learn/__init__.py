"""Prototype learners: scikit-learn estimators built from streaming k-means prototypes (the
FastKMeans suite): a clusterer, a classifier, a multi-label classifier and a regressor."""

from .classifier import FastKMeansClassifier
from .clusterer import FastKMeansClusterer
from .multilabel import FastMultiLabelKMeansClassifier
from .regressor import FastKMeansRegressor

__all__ = ["FastKMeansClassifier", "FastKMeansClusterer", "FastKMeansRegressor", "FastMultiLabelKMeansClassifier"]
