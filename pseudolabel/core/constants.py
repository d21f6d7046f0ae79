"""Names shared across the package, free of heavy imports (no TensorFlow, no pandas)."""

VERSION = "0.1.0"  # the package version (pyproject.toml says the same; a test checks)
LABEL_VALUES = ("-1", "0", "1")  # class index i <-> LABEL_VALUES[i]
N_CLASSES = len(LABEL_VALUES)
FOLD_SEED = 99  # StratifiedKFold(n_splits=5, shuffle=True, random_state=99), as the recipe
HOLDOUT = -1  # fold id of labeled rows kept out of every fold, for evaluation only
