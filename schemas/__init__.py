"""The contract every layer imports: event schemas and their validator, topics, (later) view definitions and the model feature list."""
