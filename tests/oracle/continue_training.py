"""Independent oracle: continue a model with Python xgboost and compare with refit's result.

Input (JSON file, argv[1]): previous (model path), refit (model path), features (names),
rows (list of feature objects as stored), labels, params, rounds, probe (feature objects).
Prints JSON: max_abs_diff between the two models' predictions on rows + probe, and details.
"""
import json
import sys

import numpy as np
import xgboost as xgb


def matrix(objects, names):
    # Missing or null features are NaN, as refit lays them out.
    return np.array(
        [[np.nan if o.get(n) is None else float(o[n]) for n in names] for o in objects],
        dtype=np.float32,
    )


spec = json.load(open(sys.argv[1]))
names = spec["features"]
dtrain = xgb.DMatrix(matrix(spec["rows"], names), label=np.array(spec["labels"], dtype=np.float32), feature_names=names)
previous = xgb.Booster(model_file=spec["previous"])
params = dict(spec["params"])
params["nthread"] = 1
python = xgb.train(params, dtrain, num_boost_round=spec["rounds"], xgb_model=previous)
refit = xgb.Booster(model_file=spec["refit"])

check = xgb.DMatrix(matrix(spec["rows"] + spec["probe"], names), feature_names=names)
a = python.predict(check)
b = refit.predict(check)
print(json.dumps({
    "max_abs_diff": float(np.max(np.abs(a - b))),
    "python_rounds": python.num_boosted_rounds(),
    "refit_rounds": refit.num_boosted_rounds(),
    "refit_features": refit.feature_names,
    "previous_vs_refit": float(np.max(np.abs(previous.predict(check) - b))),
}))
