"""The real bike-rental stream for the integration tests (data set: scripts/bikeshare.py).

  bike_stream.py rows CSV N [SKIP] -> JSON {"features": [...], "rows": [{"x": {...}, "y": cnt}]}
                                    (N hours in time order, after the first SKIP)
  bike_stream.py score SPEC      -> JSON [{"version": v, "mae": .., "rmse": .., "rows": n}, ...]
     SPEC: {"features": [...], "versions": [{"version": v, "model": path, "rows": [...],
            "labels": [...]}]}: each model scored on its rows, as refit's live error is.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bikeshare  # noqa: E402


def rows(csv_path, n, skip=0):
    stream = bikeshare.load_rows(csv_path)[skip:skip + n]
    print(json.dumps({"features": bikeshare.FEATURES, "rows": stream}))


def score(spec_path):
    import numpy as np
    import xgboost as xgb

    spec = json.load(open(spec_path))
    names = spec["features"]
    out = []
    for v in spec["versions"]:
        x = np.array([[r.get(f, np.nan) for f in names] for r in v["rows"]], dtype=np.float32)
        model = xgb.Booster(model_file=v["model"])
        predictions = model.predict(xgb.DMatrix(x, feature_names=names)).astype(np.float64)
        errors = predictions - np.array(v["labels"], dtype=np.float32).astype(np.float64)
        out.append({
            "version": v["version"],
            "mae": float(np.mean(np.abs(errors))),
            "rmse": float(np.sqrt(np.mean(errors ** 2))),
            "rows": len(errors),
        })
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "rows":
        rows(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    else:
        score(sys.argv[2])
