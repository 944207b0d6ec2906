"""The repository's own machinery under the method, not the paper: the greedy within cells for
large fits (``cells``), the calibration folds (``folds``), the offline ImageNet weights and the
model-hub probe (``weights``), the greedy's thread pool (``threads``). Read :mod:`fapm_lib.method`
first; these modules make it fast, bounded or offline without changing what it computes."""
