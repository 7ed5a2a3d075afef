"""The contract every layer imports: event schemas and their validator,
topics, and (later) view definitions and the model feature list."""
