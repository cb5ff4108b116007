"""scikit-learn's own estimator checks, every one of them, for the four prototype learners."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from mega_taxonomy import (
    FastKMeansClassifier,
    FastKMeansClusterer,
    FastKMeansRegressor,
    FastMultiLabelKMeansClassifier,
)


@parametrize_with_checks([
    FastKMeansClassifier(device="cpu", random_state=0),
    FastKMeansRegressor(device="cpu", random_state=0),
    FastKMeansClusterer(n_clusters=3, device="cpu", random_state=0),
    FastMultiLabelKMeansClassifier(device="cpu", random_state=0),
])
def test_sklearn_compatible(estimator, check):
    check(estimator)
