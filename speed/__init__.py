"""Speed layer: realtime views and streaming scoring (issue 13). Meets the
other layers only in lamina.schemas, the stores, lamina.models and the core.

- ``realtime`` -- the realtime tiles of the views: ``RealtimeTiles`` (one
  micro-batch: validate, dedup, apply, one store transaction with the
  offsets) and ``SpeedLayer`` (the consumer group member around it);
- ``microbatch`` -- when a micro-batch closes (size or wait);
- ``seen`` -- the per-entity dedup ids stored with the tiles;
- ``models`` -- ``ChampionHolder``: the champion of a long-running process,
  followed through the registry's alias in a background thread, verified
  against the feature contract, swapped between micro-batches
  (``Champion``: one loaded, verified version);
- ``scoring`` -- ``score_batch``: one micro-batch of (event, view features)
  to one matrix, one scorer call, ``scores.v1`` records naming the version;
- ``sink`` -- ``KafkaScoreSink``: a micro-batch's score records to
  ``scores.v1``, flushed before the store transaction (at-least-once).

``RealtimeTiles`` with a ``StreamScoring`` scores each applied transaction
in the micro-batch that applies it.
"""
