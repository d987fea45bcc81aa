"""The review loop: a clinician's verdicts and corrections on a run's answers, and the training data they become."""
