"""The label of a fault-injection test (tests/test_faults.py, test_gcs.py,
test_shared_workdir.py): benchmarks/fault_report.py runs the labelled tests and writes the
README's RELIABILITY table from their outcomes."""

SURVIVED, CLEAR = "survived", "clear error"


def fault(what: str, outcome: str):
    """Labels a test with the fault it injects and the outcome it requires."""

    def mark(fn):
        fn.fault = (what, outcome)
        return fn

    return mark
