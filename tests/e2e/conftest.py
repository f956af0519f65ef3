"""tests/e2e/ holds scripts run by hand (they install large third-party apps); pytest collects none."""

collect_ignore_glob = ["*.py"]
