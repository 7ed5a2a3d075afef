"""The contract every layer imports: event schemas and their validator,
topics, the view definitions, the feature contract, and the records the
platform writes (``scores``: the ``scores.v1`` topic's score records)."""
