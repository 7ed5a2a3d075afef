"""Serving layer: batch (+) realtime views over HTTP (issue 5). Meets the
other layers only in lamina.schemas and the stores."""
