"""Python xgboost as a data scientist uses it, for the registry tests.

  model_tool.py predict MODEL FEATURES_JSON   -> prints the prediction for one feature object
  model_tool.py train OUT                      -> trains a small model with feature names, saves OUT
"""
import json
import sys

import numpy as np
import xgboost as xgb

command = sys.argv[1]
if command == "predict":
    booster = xgb.Booster(model_file=sys.argv[2])
    row = json.loads(sys.argv[3])
    names = booster.feature_names
    x = np.array([[np.nan if row.get(n) is None else float(row[n]) for n in names]], dtype=np.float32)
    print(json.dumps({"prediction": float(booster.predict(xgb.DMatrix(x, feature_names=names))[0]), "features": names}))
elif command == "train":
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 24, size=(200, 2)).astype(np.float32)
    y = 3 * x[:, 0] + x[:, 1]
    d = xgb.DMatrix(x, label=y, feature_names=["hour", "temperature"])
    xgb.train({"objective": "reg:squarederror", "max_depth": 3}, d, num_boost_round=12).save_model(sys.argv[2])
else:
    sys.exit(f"unknown command {command}")
