"""Speed layer: realtime views and streaming scoring (issue 4). Meets the
other layers only in lamina.schemas and the stores."""
