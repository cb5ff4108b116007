"""The prototype learners against KNN, NearestCentroid and logistic / ridge regression.

Three parts, all peers measured in the same run:

- quality: 5 x 5 repeated cross-validation (stratified for classes) of every model on
  standardized features (StandardScaler fitted on each training fold): scikit-learn's ``digits``
  and ``diabetes`` (R2), river's bundled ``Bananas``, ``ImageSegments`` (accuracy) and ``Yeast``
  (multi-label micro / macro F1); mean and std over the 25 folds, model bytes, seconds per fold;
- speed: ``make_classification(600_000, 64 features, 32 informative, 10 classes, 4 clusters per
  class, class_sep=1.5, random_state=0)``, the last 100k rows held out: fit, one streaming pass of
  ``partial_fit`` in 50k-row batches, accuracy on the 100k, model bytes, and predict time on the
  same 10k held-out rows for every model (median of ``--repeats``, sides alternating), KNN's
  predict over all 100k once;
- index: a many-class sparse set (20k classes, hashed bags of words, CSR of 2^16 columns; see
  ``learners_data.many_class_sparse``), reduced by a sparse random projection to 256 dimensions
  (dense prototypes of 2^16 columns for 20k classes would be 5.2 GB), classified with cosine
  prototypes searched exactly and through the inverted file (``use_index=True``), beside KNN.

Timings are on a shared 2-core machine: noisy; ratios come from the same run.

    python benchmarks/bench_learners.py [--repeats 5] [--folds 5] [--quick] [--parts quality,speed,index]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import learners_data


def nbytes(model, X_train):
    """Bytes of what a fitted model keeps to predict."""
    name = type(model).__name__
    if hasattr(model, "model_nbytes"):
        return model.model_nbytes()
    if name.startswith("KNeighbors"):
        return int(X_train.nbytes + np.asarray(model._y).nbytes)
    if name == "NearestCentroid":
        return int(model.centroids_.nbytes)
    if name == "OneVsRestClassifier":
        return int(sum(e.coef_.nbytes + e.intercept_.nbytes for e in model.estimators_))
    return int(model.coef_.nbytes + np.asarray(model.intercept_).nbytes)


def models(task, seed):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NearestCentroid

    from mega_taxonomy import FastKMeansClassifier, FastKMeansRegressor, FastMultiLabelKMeansClassifier

    if task == "classification":
        return {"FastKMeansClassifier": lambda: FastKMeansClassifier(device="cpu", random_state=seed),
                "FastKMeansClassifier+finetune": lambda: FastKMeansClassifier(finetune_epochs=10, device="cpu",
                                                                              random_state=seed),
                "KNeighborsClassifier": KNeighborsClassifier, "NearestCentroid": NearestCentroid,
                "LogisticRegression": lambda: LogisticRegression(max_iter=2000)}
    if task == "multilabel":
        return {"FastMultiLabelKMeansClassifier": lambda: FastMultiLabelKMeansClassifier(device="cpu",
                                                                                         random_state=seed),
                "FastMultiLabelKMeansClassifier+finetune": lambda: FastMultiLabelKMeansClassifier(
                    finetune_epochs=10, device="cpu", random_state=seed),
                "FastMultiLabelKMeansClassifier(threshold=0.5)": lambda: FastMultiLabelKMeansClassifier(
                    threshold=0.5, device="cpu", random_state=seed),
                "KNeighborsClassifier": KNeighborsClassifier,
                "OneVsRest(LogisticRegression)": lambda: OneVsRestClassifier(LogisticRegression(max_iter=2000))}
    return {"FastKMeansRegressor": lambda: FastKMeansRegressor(device="cpu", random_state=seed),
            "FastKMeansRegressor+finetune": lambda: FastKMeansRegressor(finetune_epochs=10, device="cpu",
                                                                        random_state=seed),
            "KNeighborsRegressor(10, distance)": lambda: KNeighborsRegressor(n_neighbors=10, weights="distance"),
            "Ridge": Ridge}


def scores(task, model, name, X, y):
    from sklearn.metrics import accuracy_score, f1_score, r2_score

    if task == "classification":
        return {"accuracy": accuracy_score(y, model.predict(X))}
    if task == "regression":
        return {"r2": r2_score(y, model.predict(X))}
    out = {}
    pred = model.predict(X)
    out["micro_f1"], out["macro_f1"] = f1_score(y, pred, average="micro"), f1_score(y, pred, average="macro",
                                                                                       zero_division=0)
    if name.startswith("FastMultiLabel"):
        gap = model.predict(X, strategy="gap")
        out["gap_micro_f1"] = f1_score(y, gap, average="micro")
        out["gap_macro_f1"] = f1_score(y, gap, average="macro", zero_division=0)
    return out


def cross_validate(case, task, X, y, folds, repeats):
    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold
    from sklearn.preprocessing import StandardScaler

    splitter = (RepeatedStratifiedKFold if task == "classification" else RepeatedKFold)(
        n_splits=folds, n_repeats=repeats, random_state=0)
    per_model = {}
    for fold, (tr, te) in enumerate(splitter.split(X, y)):
        scaler = StandardScaler().fit(X[tr])
        a, b = scaler.transform(X[tr]).astype(np.float32), scaler.transform(X[te]).astype(np.float32)
        for name, make in models(task, seed=fold).items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = make().fit(a, y[tr])
            fitted = time.perf_counter()
            s = scores(task, model, name, b, y[te])
            row = per_model.setdefault(name, {"scores": {}, "fit": [], "predict": [], "bytes": []})
            for k, v in s.items():
                row["scores"].setdefault(k, []).append(v)
            row["fit"].append(fitted - start)
            row["predict"].append(time.perf_counter() - fitted)
            row["bytes"].append(nbytes(model, a))
    results = []
    for name, row in per_model.items():
        quality = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in row["scores"].items()}
        results.append({"case": case, "impl": name, "seconds": float(np.mean(row["fit"]) + np.mean(row["predict"])),
                        "fit_seconds": float(np.mean(row["fit"])), "predict_seconds": float(np.mean(row["predict"])),
                        "model_bytes": int(np.median(row["bytes"])), "quality": quality,
                        "folds": folds * repeats})
        print(case, name, {k: round(v["mean"], 4) for k, v in quality.items()}, flush=True)
    return results


def quality_part(folds, repeats):
    from sklearn.datasets import load_diabetes, load_digits

    sets = [("digits", "classification", lambda: load_digits(return_X_y=True)),
            ("bananas", "classification", learners_data.bananas),
            ("image_segments", "classification", learners_data.image_segments),
            ("yeast", "multilabel", learners_data.yeast),
            ("diabetes", "regression", lambda: load_diabetes(return_X_y=True))]
    results, notes = [], []
    for case, task, load in sets:
        try:
            X, y = load()
        except RuntimeError as error:  # river missing: say so, go on
            notes.append(f"{case} left out: {error}")
            continue
        results += cross_validate(case, task, np.asarray(X, dtype=np.float64), np.asarray(y), folds, repeats)
    return results, notes


def timed(fn, repeats, order_key):
    """Median seconds of ``fn`` over ``repeats`` (the caller alternates sides per repetition)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def speed_part(repeats, quick):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier, NearestCentroid
    from sklearn.preprocessing import StandardScaler

    from mega_taxonomy import FastKMeansClassifier

    X, y = learners_data.speed_set()
    if quick:
        X, y = X[-120_000:], y[-120_000:]
    n_test = 100_000 if not quick else 20_000
    scaler = StandardScaler().fit(X[:-n_test])
    X = scaler.transform(X).astype(np.float32)
    a, b, ya, yb = X[:-n_test], X[-n_test:], y[:-n_test], y[-n_test:]
    probe = b[:10_000]
    makers = {"FastKMeansClassifier": lambda: FastKMeansClassifier(device="cpu", random_state=0),
              "FastKMeansClassifier(auto_feature_weights)": lambda: FastKMeansClassifier(
                  auto_feature_weights=True, device="cpu", random_state=0),
              "KNeighborsClassifier": KNeighborsClassifier, "NearestCentroid": NearestCentroid,
              "LogisticRegression": lambda: LogisticRegression(max_iter=300)}
    fitted, results = {}, []
    for name, make in makers.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted[name] = make().fit(a, ya)
        results.append({"case": "speed_600k", "impl": name, "fit_seconds": time.perf_counter() - start,
                        "model_bytes": nbytes(fitted[name], a)})
    stream = FastKMeansClassifier(device="cpu", random_state=0)
    start = time.perf_counter()
    for lo in range(0, len(a), 50_000):
        stream.partial_fit(a[lo:lo + 50_000], ya[lo:lo + 50_000], classes=np.arange(10))
    stream_seconds = time.perf_counter() - start
    fitted["FastKMeansClassifier(partial_fit, 50k batches)"] = stream
    results.append({"case": "speed_600k", "impl": "FastKMeansClassifier(partial_fit, 50k batches)",
                    "fit_seconds": stream_seconds, "model_bytes": nbytes(stream, a)})
    # Predict latency on the same 10k rows, sides alternating, median of repeats.
    times = {name: [] for name in fitted}
    for rep in range(repeats):
        names = list(fitted) if rep % 2 == 0 else list(fitted)[::-1]
        for name in names:
            start = time.perf_counter()
            fitted[name].predict(probe)
            times[name].append(time.perf_counter() - start)
    for row in results:
        model = fitted[row["impl"]]
        start = time.perf_counter()
        pred = model.predict(b)
        row["predict_all_seconds"] = time.perf_counter() - start
        row["quality"] = {"accuracy": float((pred == yb).mean())}
        row["predict_10k_seconds"] = statistics.median(times[row["impl"]])
        row["seconds"] = row["predict_10k_seconds"]
        print(row, flush=True)
    return results


def index_part(repeats, quick):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.random_projection import SparseRandomProjection

    from mega_taxonomy import FastKMeansClassifier

    n_classes = 2_000 if quick else 20_000
    X, y, test = learners_data.many_class_sparse(n_classes=n_classes)
    start = time.perf_counter()
    proj = SparseRandomProjection(n_components=256, dense_output=True, random_state=0).fit(X[~test])
    Z = proj.transform(X).astype(np.float32)
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    project_seconds = time.perf_counter() - start
    a, b, ya, yb = Z[~test], Z[test], y[~test], y[test]
    makers = {"FastKMeansClassifier(cosine, exact)": lambda: FastKMeansClassifier(k_init=1, metric="cosine",
                                                                                  device="cpu", random_state=0),
              "FastKMeansClassifier(cosine, use_index)": lambda: FastKMeansClassifier(
                  k_init=1, metric="cosine", use_index=True, device="cpu", random_state=0),
              "KNeighborsClassifier": KNeighborsClassifier}
    results = []
    for name, make in makers.items():
        start = time.perf_counter()
        model = make().fit(a, ya)
        if hasattr(model, "_searcher"):
            model._searcher()  # build the index inside fit's time
        fit_seconds = time.perf_counter() - start
        med, pred = timed(lambda m=model: m.predict(b), repeats, name)
        results.append({"case": f"many_class_{n_classes}", "impl": name, "seconds": med, "fit_seconds": fit_seconds,
                        "model_bytes": nbytes(model, a), "quality": {"accuracy": float((pred == yb).mean())},
                        "projection_seconds": project_seconds})
        searcher = model._searcher() if hasattr(model, "_searcher") else None
        if searcher is not None and hasattr(searcher, "n_probe"):  # the calibrated probes
            results[-1].update(n_probe=int(searcher.n_probe), n_lists=int(searcher.index.nlist))
        print(results[-1], flush=True)
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cv-repeats", type=int, default=5)
    parser.add_argument("--parts", default="quality,speed,index")
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 x 2 folds: a smoke run")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    folds, cv_repeats = (2, 2) if args.quick else (args.folds, args.cv_repeats)
    parts = args.parts.split(",")
    results, notes = [], ["timings on a shared 2-core machine are noisy; ratios are measured side by side"]
    if "quality" in parts:
        r, n = quality_part(folds, cv_repeats)
        results += r
        notes += n
    if "speed" in parts:
        results += speed_part(args.repeats, args.quick)
    if "index" in parts:
        results += index_part(args.repeats, args.quick)
    speedups = {}
    for case in {r["case"] for r in results}:
        rows = {r["impl"]: r for r in results if r["case"] == case}
        ours = [k for k in rows if k.startswith("Fast")]
        knn = [k for k in rows if k.startswith("KNeighbors")]
        if ours and knn:
            speedups[case] = rows[knn[0]]["seconds"] / max(rows[ours[0]]["seconds"], 1e-12)
    params = {"folds": folds, "cv_repeats": cv_repeats, "repeats": args.repeats, "quick": args.quick,
              "parts": parts, "notes": notes}
    path = common.write("learners", params, results, speedups, " ".join(["python", *sys.argv]),
                        path=args.output)
    print(common.table([r for r in results], ["case", "impl", "seconds", "model_bytes"]))
    print("wrote", path)


if __name__ == "__main__":
    main()
